"""Robustness round 2 (the receiver's, the emulator's and the secrets' side): each finding, proved."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import socket
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.clock import ManualClock
from service.config import load_settings, new_webhook_secret, with_generated_secrets
from service.errors import PermanentOpenAIError
from service.secretbox import SealError, SecretBox
from service.signing import Signer, Verifier
from service.store.sqlite import SqliteStore
from tests.support import auth, live_server, make_settings

pytestmark = pytest.mark.anyio

KEY = b"s" * 32


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- subscription secrets sealed by default -------------------------------------------------------------


def test_generated_secret_key_reaches_the_settings(tmp_path: Path) -> None:
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "OPENAI_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"x" * 24).decode(),
    }
    settings, _ = with_generated_secrets(load_settings(env))
    stored = (tmp_path / "data" / "secret_key").read_text().strip()
    assert settings.secret_key == base64.urlsafe_b64decode(stored)
    assert len(settings.secret_key) == 32
    assert _mode(tmp_path / "data") == 0o700
    assert _mode(tmp_path / "data" / "secret_key") == 0o600
    again, _ = with_generated_secrets(load_settings(env))
    assert again.secret_key == settings.secret_key  # the same key on every start


def test_a_damaged_secret_key_file_is_one_clear_error(tmp_path: Path) -> None:
    from service.config import ConfigError

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret_key").write_text("tooshort\n")
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "OPENAI_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"x" * 24).decode(),
    }
    with pytest.raises(ConfigError, match="secret_key"):
        with_generated_secrets(load_settings(env))


@pytest.mark.slow
def test_a_default_service_stores_subscription_secrets_sealed(tmp_path: Path, service_process: Any) -> None:
    """No SORAHOOK_SECRET_KEY anywhere: the database still never holds the secret the API returned."""
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "SORAHOOK_ADMIN_TOKEN": "test-admin-token",
        "SORAHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "SORAHOOK_LOG_FORMAT": "console",
    }
    assert "SORAHOOK_SECRET_KEY" not in os.environ
    svc = service_process(env, emulator=True)
    svc.start()
    created = httpx.post(
        f"{svc.url}/v1/subscriptions", headers=auth(), json={"url": "http://127.0.0.1:9/hook"}
    ).json()
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert httpx.get(f"{svc.url}/v1/subscriptions/{created['id']}", headers=auth()).json()["secret"] == secret
    db = tmp_path / "data" / "sorahook.db"
    stored = sqlite3.connect(db).execute("SELECT secret FROM subscriptions").fetchone()[0]
    assert stored != secret and secret not in stored and stored.startswith("sealed:v2:")
    assert _mode(tmp_path / "data") == 0o700
    for name in ("sorahook.db", "sorahook.db-wal", "sorahook.db-shm"):
        assert _mode(tmp_path / "data" / name) == 0o600, name
    svc.stop()


async def _subscribe(store: SqliteStore, secret: str = "whsec_AAAA") -> str:
    sub = await store.create_subscription(
        url="http://sub.example/hook", event_types=None, description=None, secret=secret, ordered=False
    )
    return sub.id


async def test_plaintext_and_unbound_rows_are_sealed_when_the_store_opens(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path, clock=ManualClock())  # no box: rows written as an old version did
    plain = await _subscribe(store, "whsec_cGxhaW4=")
    old = await _subscribe(store, "whsec_b2xk")
    await store.aclose()
    # A row sealed the way earlier versions did (AES-GCM, a constant as associated data).
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    legacy = (
        "sealed:v1:"
        + base64.urlsafe_b64encode(
            nonce + AESGCM(KEY).encrypt(nonce, b"whsec_b2xk", b"sorahook-secret")
        ).decode()
    )
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE subscriptions SET secret = ? WHERE id = ?", (legacy, old))

    store = await SqliteStore.open(path, clock=ManualClock(), box=SecretBox(KEY))
    try:
        assert (await store.get_subscription(plain)).secret == "whsec_cGxhaW4="  # type: ignore[union-attr]
        assert (await store.get_subscription(old)).secret == "whsec_b2xk"  # type: ignore[union-attr]
    finally:
        await store.aclose()
    rows = dict(sqlite3.connect(path).execute("SELECT id, secret FROM subscriptions").fetchall())
    assert all(value.startswith("sealed:v2:") for value in rows.values())
    assert "whsec_cGxhaW4=" not in rows[plain]


async def test_a_sealed_secret_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path, clock=ManualClock(), box=SecretBox(KEY))
    try:
        victim = await _subscribe(store, "whsec_dmljdGlt")
        thief = await _subscribe(store, "whsec_dGhpZWY=")
        with sqlite3.connect(path) as conn:
            sealed = conn.execute("SELECT secret FROM subscriptions WHERE id = ?", (victim,)).fetchone()[0]
            conn.execute("UPDATE subscriptions SET secret = ? WHERE id = ?", (sealed, thief))
        assert (await store.get_subscription(thief)).secret == ""  # type: ignore[union-attr]
        assert (await store.get_subscription(victim)).secret == "whsec_dmljdGlt"  # type: ignore[union-attr]
        assert await store.enqueue_test(thief) is not None
        claimed = await store.claim_deliveries(10, 30.0)
        assert claimed == []  # never signed with the other row's secret, never sent unsigned
        delivery = (
            sqlite3.connect(path)
            .execute("SELECT status, last_error FROM deliveries WHERE subscription_id = ?", (thief,))
            .fetchone()
        )
        assert delivery[0] == "dead" and "SORAHOOK_SECRET_KEY" in delivery[1]
    finally:
        await store.aclose()


def test_secretbox_binds_the_owner() -> None:
    box = SecretBox(KEY)
    sealed = box.seal("whsec_x", "sub_a")
    assert box.open(sealed, "sub_a") == "whsec_x"
    with pytest.raises(SealError):
        box.open(sealed, "sub_b")
    with pytest.raises(SealError):
        box.open("whsec_x", "sub_a")  # plaintext is not accepted once the store has sealed every row
    with pytest.raises(SealError):
        SecretBox(b"o" * 32).open(sealed, "sub_a")


async def test_an_existing_world_readable_database_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    store = await SqliteStore.open(path, clock=ManualClock(), box=SecretBox(KEY))
    await store.aclose()
    assert _mode(path) == 0o600


# --- what a storable event is ------------------------------------------------------------------------------


def _event(data: str = '{"id": "video_1"}', created_at: str = "1800000000", event_id: str = '"evt_1"') -> str:
    return (
        f'{{"id": {event_id}, "object": "event", "created_at": {created_at}, "type": "video.completed",'
        f' "data": {data}}}'
    )


def _signed(secret: str, body: str, msg_id: str = "") -> tuple[bytes, dict[str, Any]]:
    headers: dict[str, Any] = Signer().headers(
        msg_id or f"wh_{secrets.token_hex(8)}", int(time.time()), body, [secret]
    )
    headers["webhook-id"] = headers["webhook-id"].encode("utf-8")
    return body.encode(), headers


REFUSED = {
    "created_at of 2^63": (_event(created_at=str(2**63)), "64 bits"),
    "NaN": (_event('{"id": "video_1", "x": NaN}'), "NaN"),
    "Infinity": (_event('{"id": "video_1", "x": [Infinity]}'), "Infinity"),
    "-Infinity": (_event('{"id": "video_1", "x": -Infinity}'), "Infinity"),
    "1e400": (_event('{"id": "video_1", "x": 1e400}'), "double"),
    "lone surrogate": (_event('{"id": "video_1", "note": "a\\ud800b"}'), "surrogate"),
    "lone low surrogate": (_event('{"id": "video_1", "note": "\\udc00"}'), "surrogate"),
    "900 deep": (_event('{"id": "video_1", "x": ' + "[" * 900 + "]" * 900 + "}"), "deeper"),
    "65 deep": (_event('{"id": "video_1", "x": ' + "[" * 63 + "]" * 63 + "}"), "deeper"),
    "100k data.id": (_event('{"id": "' + "v" * 100_000 + '"}'), "data.id"),
    "data.id with a newline": (_event('{"id": "video\\n1"}'), "data.id"),
    "id with a control character": (_event(event_id='"evt\\u0001"'), "id must"),
    "data.id a lone surrogate": (_event('{"id": "\\ud800"}'), "data.id"),
}


async def test_unstorable_events_get_400_invalid_payload_and_nothing_is_stored(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for name, (body, says) in REFUSED.items():
            content, headers = _signed(s.webhook_secrets[0], body)
            response = await client.post("/webhooks/openai", content=content, headers=headers)
            assert response.status_code == 400, (name, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_payload" and says in error["message"], (name, error)
        assert (await client.get("/v1/jobs", headers=auth())).json()["data"] == []


async def test_storable_edge_cases_are_accepted_and_served_back(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    accepted = {
        "video_max_int": _event('{"id": "video_max_int"}', created_at=str(2**63 - 1)),
        "video_deep": _event('{"id": "video_deep", "x": ' + "[" * 62 + "]" * 62 + "}"),
        "video_pair": _event('{"id": "video_pair", "note": "\\ud83d\\ude00 \\u00e9"}'),
        "v" * 256: _event('{"id": "' + "v" * 256 + '", "n": 1.5e300}'),
    }
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for resource_id, body in accepted.items():
            content, headers = _signed(s.webhook_secrets[0], body)
            response = await client.post("/webhooks/openai", content=content, headers=headers)
            assert response.status_code == 200, (resource_id[:20], response.text)
            job = (await client.get(f"/v1/jobs/{resource_id}", headers=auth())).json()
            events = await client.get(f"/v1/jobs/{job['id']}/events", headers=auth())
            assert events.status_code == 200
        pair = (await client.get("/v1/jobs/video_pair", headers=auth())).json()
        events = (await client.get(f"/v1/jobs/{pair['id']}/events", headers=auth())).json()["data"]
        assert events[0]["payload"]["data"]["note"] == "\U0001f600 é"


async def test_a_malformed_resource_id_is_a_final_failure_for_the_refresher(tmp_path: Path) -> None:
    from service.emulator import Emulator, EmulatorConfig
    from service.metrics import Metrics
    from service.openai_client import OpenAIClient
    from service.submitter import Refresher

    clock = ManualClock()
    emulator = Emulator(EmulatorConfig(duration=1.0), clock=clock)
    store = await SqliteStore.open(tmp_path / "db.sqlite", clock=clock)
    openai = OpenAIClient(
        base_url="http://emulator/v1",
        metrics=Metrics(),
        transport=httpx.ASGITransport(app=emulator.app),
        max_retries=0,
    )
    try:
        long_id = "video_" + "x" * 100_000
        job, _ = await store.track_job(kind="video", resource_id=long_id, callback_url=None, metadata={})
        refresher = Refresher(store=store, openai=openai, clock=clock)
        assert await refresher.run_once() == 1  # no httpx.InvalidURL: the job is settled, not re-leased
        clock.advance(3600)
        assert await refresher.run_once() == 0
        settled = await store.get_job(job.id)
        assert settled is not None and settled.status == "failed"
        assert emulator.calls == []  # nothing was sent
        for bad in (long_id, "video\n1", "\ud800"):
            with pytest.raises(PermanentOpenAIError) as caught:
                await openai.retrieve("video", bad)
            assert caught.value.status == 404
    finally:
        await openai.aclose()
        await store.aclose()
        await emulator.aclose()


# --- verification: what is wrong, timestamp first, UTF-8 ids -----------------------------------------------


def test_rejections_say_what_is_wrong_and_check_the_timestamp_first() -> None:
    secret = new_webhook_secret()
    verifier = Verifier([secret], tolerance=300)
    now = 1_800_000_000
    body = b'{"id": "evt_1"}'
    malformed = verifier.verify(body, "wh_1", str(now), "v1,abc", now)
    assert malformed.verdict == "invalid_signature" and "malformed" in malformed.message
    absent = verifier.verify(body, "wh_1", str(now), "v1a,abc", now)
    assert absent.verdict == "invalid_signature" and "no v1" in absent.message
    short = base64.b64encode(b"x" * 16).decode()
    assert "malformed" in verifier.verify(body, "wh_1", str(now), f"v1,{short}", now).message
    stale = verifier.verify(body, "wh_1", str(now - 3600), "v1,abc", now)
    assert stale.verdict == "timestamp_out_of_tolerance"
    wrong = base64.b64encode(b"x" * 32).decode()
    mismatch = verifier.verify(body, "wh_1", str(now), f"v1,{wrong}", now)
    assert mismatch.verdict == "invalid_signature" and "no signature matches" in mismatch.message
    good = Signer().sign("wh_1", now, body.decode(), secret)
    assert verifier.verify(body, "wh_1", str(now), f"v1,abc {good}", now).verdict == "ok"


async def test_a_non_ascii_webhook_id_is_read_as_utf8(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        content, headers = _signed(s.webhook_secrets[0], _event('{"id": "video_utf8"}'), msg_id="wh_é☃")
        response = await client.post("/webhooks/openai", content=content, headers=headers)
        assert response.status_code == 200, response.text
        again = await client.post("/webhooks/openai", content=content, headers=headers)
        assert again.json() == {"status": "duplicate"}
        content, headers = _signed(s.webhook_secrets[0], _event('{"id": "video_bytes"}'))
        headers["webhook-id"] = b"wh_\xff\xfe"  # not UTF-8: no sender could have signed it
        refused = await client.post("/webhooks/openai", content=content, headers=headers)
        assert refused.status_code == 401 and "webhook-id" in refused.json()["error"]["message"]


# --- redirects, URLs, 401, oversized bodies ----------------------------------------------------------------


async def test_no_redirect_is_built_from_the_host_header(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for path in ("/v1/jobs/", "/v1/jobs/?limit=5", "/healthz/", "/v1/subscriptions/"):
            response = await client.get(path, headers={"host": "evil.example"})
            location = response.headers.get("location", "")
            assert "evil.example" not in location, (path, location)
            assert response.status_code in (307, 404), path
            if response.status_code == 307:
                assert location.startswith("/") and not location.startswith("//")
                assert location == path.replace("/?", "?").rstrip("/")
            else:
                assert response.json()["error"]["code"] == "not_found"
        # A path no route serves either way is a JSON 404, whatever it decodes to.
        for path in ("/nowhere/", "//evil.example/", "//evil.example"):
            response = await client.get(path, headers={"host": "evil.example"})
            assert response.status_code == 404 and "location" not in response.headers, path
        # What the path decodes to never reaches the header: the redirect repeats the path as sent.
        response = await client.get("/v1/jobs/%0d%0aset-cookie:x/", headers={"host": "evil.example"})
        assert response.headers["location"] == "/v1/jobs/%0d%0aset-cookie:x"
        assert "set-cookie" not in response.headers
        followed = await client.get("/v1/jobs/", headers=auth(), follow_redirects=True)
        assert followed.status_code == 200 and str(followed.url) == f"{url}/v1/jobs"


async def test_urls_with_control_characters_are_refused(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for bad in (
            "http://127.0.0.1:9/a\r\nX-Injected: 1",
            "http://127.0.0.1:9/a\nb",
            "http://127.0.0.1:9/a\tb",
            "http://127.0.0.1:9/a\x00b",
            "http://127.0.0.1:9/a\x7fb",
            "http://127.0.0.1:9/a b",
            "http://127.0.0.1\r\n:9/",
        ):
            sub = await client.post("/v1/subscriptions", headers=auth(), json={"url": bad})
            assert sub.status_code == 422 and sub.json()["error"]["code"] == "invalid_url", (bad, sub.text)
            job = await client.post("/v1/jobs", headers=auth(), json={"prompt": "p", "callback_url": bad})
            assert job.status_code == 422 and job.json()["error"]["code"] == "invalid_url", (bad, job.text)
        assert (await client.get("/v1/subscriptions", headers=auth())).json()["data"] == []
        fine = await client.post(
            "/v1/subscriptions", headers=auth(), json={"url": "http://127.0.0.1:9/a?b=c%20d"}
        )
        assert fine.status_code == 201


async def test_a_401_names_the_bearer_scheme(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic abc"}):
            response = await client.get("/v1/jobs", headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def _exchange(port: int, request: bytes, then: bytes = b"") -> list[bytes]:
    """Send `request` whole (then `then` on the same connection), read until the server closes or both
    answers are in, and return every answer's status line. A reset raises (ConnectionResetError)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request + then)
        received = b""
        wanted = 2 if then else 1
        while received.count(b"HTTP/1.1 ") < wanted or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        if not then:
            sock.settimeout(10)
            assert sock.recv(65536) == b""  # a clean close (FIN) after the answer, not a reset
    return re.findall(rb"HTTP/1\.1 [0-9]{3}[^\r]*", received)


async def test_an_oversized_body_gets_its_413_before_the_connection_closes(tmp_path: Path) -> None:
    s = make_settings(tmp_path, max_body_bytes=4096)
    async with live_server(create_app(s, start_workers=False)) as url:
        port = int(url.rsplit(":", 1)[1])
        healthz = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
        body = b"x" * 2_000_000
        chunks = b"".join(b"%x\r\n%s\r\n" % (65536, b"y" * 65536) for _ in range(30)) + b"0\r\n\r\n"

        def declared(version: bytes = b"1.1", extra: bytes = b"") -> bytes:
            head = b"POST /webhooks/openai HTTP/%s\r\nhost: x\r\n%scontent-length: %d\r\n\r\n"
            return head % (version, extra, len(body)) + body

        def chunked(extra: bytes = b"") -> bytes:
            head = b"POST /webhooks/openai HTTP/1.1\r\nhost: x\r\n%stransfer-encoding: chunked\r\n\r\n"
            return head % extra + chunks

        too_large = [b"HTTP/1.1 413 Request Entity Too Large"]
        # Kept alive: the 413, and the connection still serves the next request.
        for request in (declared(), chunked()):
            statuses = await asyncio.to_thread(_exchange, port, request, healthz)
            assert statuses == [*too_large, b"HTTP/1.1 200 OK"]
        # Closed after the answer: the 413 arrives and the close is clean, never ECONNRESET.
        close = b"connection: close\r\n"
        for request in (declared(extra=close), declared(version=b"1.0"), chunked(close)):
            for _ in range(3):
                assert await asyncio.to_thread(_exchange, port, request) == too_large
        # A client that waits for `100 Continue` is never invited to send the body it was refused.
        waiting = (
            b"POST /webhooks/openai HTTP/1.1\r\nhost: x\r\nconnection: close\r\nexpect: 100-continue\r\n"
        )
        waiting += b"content-length: %d\r\n\r\n" % len(body)
        assert await asyncio.to_thread(_exchange, port, waiting) == too_large


# --- the admin token in the log ----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_admin_token_is_printed_once_and_only_when_generated(
    tmp_path: Path, service_process: Any
) -> None:
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "SORAHOOK_LOG_FORMAT": "console",
    }
    first = service_process(env, emulator=True)
    first.start()
    first.stop()
    token = (tmp_path / "data" / "admin_token").read_text().strip()
    assert token in first.log.read_text()
    second = service_process(env, emulator=True)
    second.start()
    second.stop()
    assert token not in second.log.read_text()
    supplied = service_process({**env, "SORAHOOK_ADMIN_TOKEN": "supplied-token-1234"}, emulator=True)
    supplied.start()
    supplied.stop()
    assert "supplied-token-1234" not in supplied.log.read_text()


# --- emulator mode: its API and control routes behind the admin token ---------------------------------------


@pytest.mark.slow
def test_emulator_mode_keeps_its_routes_behind_the_admin_token(tmp_path: Path, service_process: Any) -> None:
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "SORAHOOK_ADMIN_TOKEN": "test-admin-token",
        "SORAHOOK_EMULATOR_DURATION": "0.3",
        "SORAHOOK_LOG_FORMAT": "console",
    }
    svc = service_process(env, emulator=True)
    svc.start()
    emulator = f"{svc.url}/_emulator"
    stranger = httpx.post(
        f"{emulator}/v1/videos", json={"prompt": "x"}, headers={"authorization": "Bearer x"}
    )
    assert stranger.status_code == 401
    assert httpx.post(f"{emulator}/v1/videos", json={"prompt": "x"}).status_code == 401
    fault = {"status": 500, "count": 5}
    assert httpx.post(f"{emulator}/_control/faults", json=fault).status_code == 401
    assert httpx.get(f"{emulator}/_control/calls").status_code == 401
    too_many = httpx.post(
        f"{emulator}/_control/faults", json={"status": 500, "count": 5_000_000}, headers=auth()
    )
    assert too_many.status_code == 422
    # The OpenAI SDK (or curl) with the admin token as its API key, and sorahook itself, still work.
    own = httpx.post(f"{emulator}/v1/videos", json={"prompt": "x"}, headers=auth())
    assert own.status_code == 200 and own.json()["object"] == "video"
    job = httpx.post(f"{svc.url}/v1/jobs", json={"prompt": "a fox"}, headers=auth()).json()
    deadline = time.monotonic() + 20
    while httpx.get(f"{svc.url}/v1/jobs/{job['id']}", headers=auth()).json()["status"] != "completed":
        assert time.monotonic() < deadline, "the job did not complete through the guarded emulator"
        time.sleep(0.05)
    svc.stop()
    assert "non-loopback" not in svc.log.read_text()


def test_an_exposed_emulator_is_warned_about(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    from service.emulator.mount import is_loopback, mounted_emulator

    settings = make_settings(tmp_path)
    with caplog.at_level("WARNING", logger="sorahook.emulator"):
        emulator, resolved = mounted_emulator(settings, "http://127.0.0.1:8000", "127.0.0.1")
    assert not caplog.records
    assert resolved.openai_api_keys == (settings.admin_token,)
    assert emulator.config.control_token == settings.admin_token
    with caplog.at_level("WARNING", logger="sorahook.emulator"):
        mounted_emulator(settings, "http://127.0.0.1:8000", "0.0.0.0")
    assert any("non-loopback" in r.getMessage() for r in caplog.records)
    assert [is_loopback(h) for h in ("localhost", "::1", "127.0.0.2", "0.0.0.0", "::", "10.0.0.1")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]


async def test_draining_a_refused_body_is_bounded() -> None:
    from service.receiver import drain

    received = 0

    async def endless() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    await drain(endless, 10_000, idle=5.0, total=30.0)  # type: ignore[arg-type]
    assert received == 11  # stops once past the byte limit

    async def silent() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    await drain(silent, 10_000, idle=0.01, total=30.0)  # type: ignore[arg-type]  # returns: idle bound

    async def trickle() -> dict[str, Any]:
        await asyncio.sleep(0.005)
        return {"type": "http.request", "body": b"x", "more_body": True}

    await drain(trickle, 10_000, idle=5.0, total=0.05)  # type: ignore[arg-type]  # returns: total bound


async def test_a_malformed_resource_id_is_settled_by_the_reconciler(tmp_path: Path) -> None:
    from service.emulator import Emulator, EmulatorConfig
    from service.metrics import Metrics
    from service.openai_client import OpenAIClient
    from service.reconciler import Reconciler

    clock = ManualClock()
    emulator = Emulator(EmulatorConfig(duration=1.0), clock=clock)
    store = await SqliteStore.open(tmp_path / "db.sqlite", clock=clock)
    openai = OpenAIClient(
        base_url="http://emulator/v1",
        metrics=Metrics(),
        transport=httpx.ASGITransport(app=emulator.app),
        max_retries=0,
    )
    try:
        jobs = [
            (await store.track_job(kind=kind, resource_id=rid, callback_url=None, metadata={}))[0]
            for kind, rid in (("batch", "batch_" + "x" * 100_000), ("video", "video\x00x"))
        ]
        reconciler = Reconciler(
            store=store, openai=openai, clock=clock, metrics=Metrics(), interval=10.0, stale_after=60.0
        )
        clock.advance(120)
        await reconciler.run_once()
        for job in jobs:
            settled = await store.get_job(job.id)
            assert settled is not None and settled.status == "failed"
        clock.advance(3600)
        assert (await reconciler.run_once()).stale == 0  # never asked again
        assert [call for call in emulator.calls if call[1] != "/v1/videos"] == []  # nothing sent by id
    finally:
        await openai.aclose()
        await store.aclose()
        await emulator.aclose()
