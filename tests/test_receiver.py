"""POST /webhooks/openai against a real server: every row of the contract's receiver table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from service.app import create_app
from service.config import new_webhook_secret
from tests.support import auth, live_server, make_settings, signed_webhook

pytestmark = pytest.mark.anyio


async def _count(client: httpx.AsyncClient) -> int:
    response = await client.get("/v1/jobs?limit=100", headers=auth())
    return len(response.json()["data"])


async def test_valid_webhook_is_accepted_stored_and_moves_the_job(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = signed_webhook(s.webhook_secrets[0], "video.completed", "video_abc")
        response = await client.post("/webhooks/openai", content=body, headers=headers)
        assert response.status_code == 200
        assert response.json() == {"status": "accepted"}
        job = (await client.get("/v1/jobs/video_abc", headers=auth())).json()
        assert job["status"] == "completed" and job["origin"] == "webhook" and job["kind"] == "video"
        assert job["sequence"] == 1 and job["completed_at"] is not None
        events = (await client.get(f"/v1/jobs/{job['id']}/events", headers=auth())).json()["data"]
        assert [(e["direction"], e["type"]) for e in events] == [
            ("received", "video.completed"),
            ("emitted", "video.completed"),
        ]
        assert events[0]["payload"]["data"]["id"] == "video_abc"


async def test_duplicate_webhook_id_is_acknowledged_once(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = signed_webhook(
            s.webhook_secrets[0], "video.completed", "video_dup", webhook_id="wh_same"
        )
        first = await client.post("/webhooks/openai", content=body, headers=headers)
        second = await client.post("/webhooks/openai", content=body, headers=headers)
        assert first.json() == {"status": "accepted"}
        assert second.status_code == 200 and second.json() == {"status": "duplicate"}
        job = (await client.get("/v1/jobs/video_dup", headers=auth())).json()
        events = (await client.get(f"/v1/jobs/{job['id']}/events", headers=auth())).json()["data"]
        assert len(events) == 2 and job["sequence"] == 1


async def test_unknown_event_type_is_stored_without_a_job(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = signed_webhook(s.webhook_secrets[0], "eval.run.succeeded", "evalrun_1")
        response = await client.post("/webhooks/openai", content=body, headers=headers)
        assert response.status_code == 200 and response.json() == {"status": "accepted"}
        assert (await client.get("/v1/jobs/evalrun_1", headers=auth())).status_code == 404
        assert await _count(client) == 0


async def test_late_event_cannot_move_a_terminal_job_back(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for event_type in ("video.completed", "video.failed"):
            body, headers = signed_webhook(s.webhook_secrets[0], event_type, "video_late")
            assert (await client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200
        job = (await client.get("/v1/jobs/video_late", headers=auth())).json()
        assert job["status"] == "completed" and job["sequence"] == 1


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
async def test_missing_headers_are_a_400(tmp_path: Path, missing: str) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = signed_webhook(s.webhook_secrets[0])
        del headers[missing]
        response = await client.post("/webhooks/openai", content=body, headers=headers)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "missing_headers"
        assert await _count(client) == 0


@pytest.mark.parametrize(
    "signature",
    ["garbage", "v1", "v1,a,b", "v1,@@@not-base64@@@", "v2,AAAA", "v1,AAAA", ",", "v1,", "v1,AAAA v1"],
)
async def test_malformed_or_wrong_signatures_are_a_401_never_a_500(tmp_path: Path, signature: str) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = signed_webhook(s.webhook_secrets[0])
        headers["webhook-signature"] = signature
        response = await client.post("/webhooks/openai", content=body, headers=headers)
        assert response.status_code in (400, 401)
        assert response.json()["error"]["code"] in ("invalid_signature", "missing_headers")
        assert await _count(client) == 0


async def test_signature_by_another_secret_is_rejected(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = signed_webhook(new_webhook_secret())
        response = await client.post("/webhooks/openai", content=body, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_signature"


@pytest.mark.parametrize("skew", [-301, 301, -100000, 100000])
async def test_timestamp_outside_tolerance_is_rejected_both_ways(tmp_path: Path, skew: int) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = signed_webhook(s.webhook_secrets[0], timestamp=int(time.time()) + skew)
        response = await client.post("/webhooks/openai", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "timestamp_out_of_tolerance"
        assert await _count(client) == 0


@pytest.mark.parametrize("timestamp", ["abc", "1e9", "-5", "99999999999999999999", "12.5", "\xb9"])
async def test_odd_timestamps_are_a_401(tmp_path: Path, timestamp: str) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = signed_webhook(s.webhook_secrets[0])
        headers["webhook-timestamp"] = timestamp.encode("latin-1")  # type: ignore[assignment]
        response = await client.post("/webhooks/openai", content=body, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_signature"


async def test_rotation_accepts_either_secret(tmp_path: Path) -> None:
    old, new = new_webhook_secret(), new_webhook_secret()
    s = make_settings(tmp_path, webhook_secrets=(new, old))
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for secret in (old, new):
            body, headers = signed_webhook(secret)
            assert (await client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200
        # A header carrying several entries passes if any one matches.
        body, headers = signed_webhook(old)
        headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
        assert (await client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200
        assert await _count(client) == 3


async def test_body_over_the_limit_is_a_413_and_not_stored(tmp_path: Path) -> None:
    s = make_settings(tmp_path, max_body_bytes=2048)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = signed_webhook(s.webhook_secrets[0])
        padded = json.loads(body)
        padded["padding"] = "x" * 5000
        big = json.dumps(padded).encode()
        response = await client.post("/webhooks/openai", content=big, headers=headers)
        assert response.status_code == 413

        async def chunks():  # no Content-Length: the limit holds while streaming
            for _ in range(10):
                yield b"x" * 1024

        response = await client.post("/webhooks/openai", content=chunks(), headers=headers)
        assert response.status_code == 413
        assert await _count(client) == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1,2]",
        b'{"id":"evt_1","type":"video.completed"}',
        b'{"id":"evt","type":"x","data":{"id":5}}',
        b'{"type":"video.completed","data":{"id":"video_1"}}',
        b"\xff\xfe",
    ],
)
async def test_signed_body_that_is_not_an_event_is_a_400(tmp_path: Path, payload: bytes) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        from service.signing import Signer

        ts = int(time.time())
        try:
            headers = Signer().headers("wh_x", ts, payload.decode(), [s.webhook_secrets[0]])
        except UnicodeDecodeError:
            _, headers = signed_webhook(s.webhook_secrets[0])
        response = await client.post("/webhooks/openai", content=payload, headers=headers)
        assert response.status_code in (400, 401)
        if payload != b"\xff\xfe":
            assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_payload"
        assert await _count(client) == 0


header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=80
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    msg_id=st.one_of(st.none(), header_text),
    timestamp=st.one_of(st.none(), header_text, st.integers(-(10**15), 10**15).map(str)),
    signature=st.one_of(st.none(), header_text, st.lists(header_text, max_size=4).map(" ".join)),
    body=st.binary(max_size=300),
)
def test_arbitrary_headers_and_bodies_never_get_a_5xx(
    tmp_path: Path, msg_id: str | None, timestamp: str | None, signature: str | None, body: bytes
) -> None:
    client = _fuzz_client(tmp_path)
    headers = {}
    for name, value in (
        ("webhook-id", msg_id),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", signature),
    ):
        if value is not None:
            headers[name] = value.encode("latin-1")
    try:
        response = client.post("/webhooks/openai", content=body, headers=headers)
    except httpx.LocalProtocolError:
        return  # a header no HTTP client can send (e.g. surrounding whitespace)
    assert response.status_code < 500, response.text
    assert "error" in response.json()


_FUZZ: dict[str, TestClient] = {}


def _fuzz_client(tmp_path: Path) -> TestClient:
    # One app for all examples of the property test (a fresh app per example would be slow).
    client = _FUZZ.get("client")
    if client is None:
        client = TestClient(create_app(make_settings(tmp_path), start_workers=False))
        client.__enter__()
        _FUZZ["client"] = client
    return client


@pytest.fixture(autouse=True, scope="module")
def _close_fuzz_client():
    yield
    client = _FUZZ.pop("client", None)
    if client is not None:
        client.__exit__(None, None, None)


async def test_the_direct_route_keeps_the_routers_answers_and_the_json_500(tmp_path: Path) -> None:
    # POST /webhooks/openai skips the router; other methods on it still get the router's 405, and a
    # receiver that fails (here: its store closed under it) still answers with sorahook's JSON 500.
    s = make_settings(tmp_path)
    app = create_app(s, start_workers=False)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        wrong = await client.get("/webhooks/openai")
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
        body, headers = signed_webhook(s.webhook_secrets[0], "video.completed", "video_slash")
        slash = await client.post("/webhooks/openai/", content=body, headers=headers)  # no 307
        assert slash.status_code == 200 and slash.json() == {"status": "accepted"}
        await app.state.runtime.store.aclose()
        body, headers = signed_webhook(s.webhook_secrets[0], "video.completed", "video_closed")
        failed = await client.post("/webhooks/openai", content=body, headers=headers)
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
        assert len(failed.headers["x-request-id"]) == 24  # the 500 carries the request id too
        named = await client.post(
            "/webhooks/openai", content=body, headers={**headers, "x-request-id": "trace-me-1"}
        )
        assert named.status_code == 500 and named.headers["x-request-id"] == "trace-me-1"
