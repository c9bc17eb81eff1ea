"""Manual and bulk retries of deliveries, what each attempt records, callback order, subscription pages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.app import create_app
from tests.subscriber import Subscriber
from tests.support import auth, emulated_service, live_server, make_settings, signed_webhook, wait_until

pytestmark = pytest.mark.anyio


class Endpoint:
    """Answers each path with its configured status and body (200, "ok" by default); counts requests."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.hits: dict[str, int] = {}

    async def handle(self, request: Request) -> Response:
        await request.body()
        self.hits[request.url.path] = self.hits.get(request.url.path, 0) + 1
        status, body = self.answers.get(request.url.path, (200, b"ok"))
        return Response(body, status_code=status)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{rest:path}", self.handle, methods=["POST"])])


async def _subscribe(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.post("/v1/subscriptions", json={"url": url}, headers=auth())
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _webhook(client: httpx.AsyncClient, secret: str, resource_id: str) -> None:
    body, headers = signed_webhook(secret, "video.completed", resource_id)
    assert (await client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200


async def _deliveries(client: httpx.AsyncClient, **query: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/deliveries", params={"limit": "100", **query}, headers=auth())
    assert response.status_code == 200
    return list(response.json()["data"])


async def test_manual_retry_runs_the_whole_schedule_again_with_consistent_counts(tmp_path: Path) -> None:
    endpoint = Endpoint()
    endpoint.answers["/down"] = (503, b"try later")
    s = make_settings(tmp_path, retry_schedule=(0.0, 0.05, 0.05))
    async with live_server(endpoint.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            sub = await _subscribe(client, f"{sub_url}/down")
            await _webhook(client, s.webhook_secrets[0], "video_retry")
            [dead] = await wait_until(lambda: _deliveries(client, subscription_id=sub["id"], status="dead"))
            assert dead["attempt_count"] == len(dead["attempts"]) == 3
            attempt = dead["attempts"][0]
            assert attempt["status_code"] == 503 and attempt["error"] is None
            retried = await client.post(f"/v1/deliveries/{dead['id']}/retry", headers=auth())
            assert retried.status_code == 202
            # The answer tells the delivery's real state: waiting to be sent, not "failed".
            assert retried.json()["status"] == "pending" and retried.json()["attempt_count"] == 3

            async def dead_again() -> list[dict[str, Any]]:
                found = await _deliveries(client, subscription_id=sub["id"], status="dead")
                return [d for d in found if d["attempt_count"] > 3]

            [again] = await wait_until(dead_again)
            # A fresh schedule: three more attempts, not one; the count is the attempts listed.
            assert again["attempt_count"] == len(again["attempts"]) == 6
            assert endpoint.hits["/down"] == 6


async def test_an_attempt_records_status_latency_and_the_answer(tmp_path: Path) -> None:
    endpoint = Endpoint()
    long_answer = ("x" * 600 + "é" * 600).encode()  # 1,800 bytes: more than the 1 KiB kept
    endpoint.answers["/ok"] = (503, long_answer)
    s = make_settings(tmp_path, retry_schedule=(0.0, 0.2, 0.2))
    async with live_server(endpoint.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            sub = await _subscribe(client, f"{sub_url}/ok")
            await _webhook(client, s.webhook_secrets[0], "video_body")
            await wait_until(lambda: _deliveries(client, subscription_id=sub["id"], status="failed"))
            endpoint.answers["/ok"] = (200, b'{"received": true}')
            [ok] = await wait_until(
                lambda: _deliveries(client, subscription_id=sub["id"], status="succeeded")
            )
            failed, succeeded = ok["attempts"]
            assert failed["status_code"] == 503 and failed["latency_ms"] >= 0
            # The first 1 KiB of the answer: 600 "x" and 212 "é" (2 bytes each).
            assert failed["response_body"] == long_answer[:1024].decode() == "x" * 600 + "é" * 212
            assert succeeded["status_code"] == 200 and succeeded["response_body"] == '{"received": true}'
            one = (await client.get(f"/v1/deliveries/{ok['id']}", headers=auth())).json()
            assert one["attempts"] == ok["attempts"]


async def test_bulk_retry_requeues_the_dead_deliveries_of_a_subscription_or_since_a_time(
    tmp_path: Path,
) -> None:
    endpoint = Endpoint()
    endpoint.answers["/a"] = (500, b"")
    endpoint.answers["/b"] = (500, b"")
    s = make_settings(tmp_path, retry_schedule=(0.0,))
    async with live_server(endpoint.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            a = await _subscribe(client, f"{sub_url}/a")
            b = await _subscribe(client, f"{sub_url}/b")
            for i in range(3):
                await _webhook(client, s.webhook_secrets[0], f"video_bulk{i}")

            async def all_dead() -> bool:
                return len(await _deliveries(client, status="dead")) == 6

            await wait_until(all_dead)
            for body in ({}, {"since": "yesterday"}, {"subscription_id": 7}, {"subscription": a["id"]}):
                refused = await client.post("/v1/deliveries/retry", json=body, headers=auth())
                assert refused.status_code == 422, body
            assert (await client.post("/v1/deliveries/retry", json={}, headers=auth())).json()["error"][
                "code"
            ] == "missing_filter"
            unknown = await client.post(
                "/v1/deliveries/retry", json={"subscription_id": "sub_nope"}, headers=auth()
            )
            assert unknown.status_code == 404
            endpoint.answers["/a"] = (200, b"")
            done = await client.post(
                "/v1/deliveries/retry", json={"subscription_id": a["id"]}, headers=auth()
            )
            assert done.status_code == 202 and done.json()["retried"] == 3
            await wait_until(lambda: _deliveries_with(client, a["id"], "succeeded", 3))
            assert len(await _deliveries(client, subscription_id=b["id"], status="dead")) == 3
            future = await client.post(
                "/v1/deliveries/retry", json={"since": time.time() + 60}, headers=auth()
            )
            assert future.json()["retried"] == 0
            endpoint.answers["/b"] = (200, b"")
            everything = await client.post("/v1/deliveries/retry", json={"since": 0}, headers=auth())
            assert everything.json()["retried"] == 3  # only b's were still dead
            await wait_until(lambda: _deliveries_with(client, b["id"], "succeeded", 3))
            for d in await _deliveries(client):
                assert d["attempt_count"] == len(d["attempts"]) == 2


async def _deliveries_with(client: httpx.AsyncClient, sub_id: str, status: str, n: int) -> bool:
    return len(await _deliveries(client, subscription_id=sub_id, status=status)) == n


async def test_subscriptions_are_listed_in_pages(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        made = [(await _subscribe(client, f"http://127.0.0.1:9/p{i}"))["id"] for i in range(5)]
        whole = (await client.get("/v1/subscriptions", headers=auth())).json()
        assert [x["id"] for x in whole["data"]] == made and whole["has_more"] is False
        assert whole["object"] == "list" and whole["last_id"] == made[-1]
        seen: list[str] = []
        after = ""
        while True:
            page = (
                await client.get("/v1/subscriptions", params={"limit": "2", "after": after}, headers=auth())
            ).json()
            seen += [x["id"] for x in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert seen == made
        bad = await client.get("/v1/subscriptions", params={"limit": "0"}, headers=auth())
        assert bad.status_code == 422


async def test_an_unknown_subscriptions_list_parameter_is_400_naming_it_as_for_jobs(tmp_path: Path) -> None:
    # A typo (`limt=2`) would otherwise silently answer the default page.
    async with (
        live_server(create_app(make_settings(tmp_path), start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        bad = await client.get("/v1/subscriptions", params={"limt": "2"}, headers=auth())
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "unknown_parameter" and bad.json()["error"]["param"] == "limt"
        good = await client.get("/v1/subscriptions", params={"limit": "2", "after": ""}, headers=auth())
        assert good.status_code == 200


async def test_callback_url_events_arrive_in_order_when_the_first_fails(tmp_path: Path) -> None:
    sub_server = Subscriber()
    sub_server.script("/cb", 500, 500)  # the first event fails twice; the later one must wait for it
    async with live_server(sub_server.app()) as sub_url:
        async with (
            emulated_service(tmp_path, retry_schedule=(0.0, 0.3, 0.3, 0.3)) as (url, _, _s),
            httpx.AsyncClient(base_url=url) as client,
        ):
            created = await client.post(
                "/v1/jobs", json={"prompt": "in order", "callback_url": f"{sub_url}/cb"}, headers=auth()
            )
            assert created.status_code == 202

            async def four() -> bool:
                return len(sub_server.on("/cb")) >= 4

            await wait_until(four, timeout=20)
            sequence = [(r.event["type"], r.event["data"]["sequence"]) for r in sub_server.on("/cb")]
            assert sequence[:3] == [("video.queued", 1)] * 3
            assert sequence[3] == ("video.completed", 2)
