"""Fan-out with real local subscribers: signatures, retries, dead letters, replay, isolation, SSRF."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
import svix
from openai import OpenAI

from service import ssrf
from service.app import create_app
from service.clock import ManualClock
from tests.subscriber import Subscriber
from tests.support import auth, emulated_service, live_server, make_settings, signed_webhook, wait_until

pytestmark = pytest.mark.anyio


async def _subscribe(client: httpx.AsyncClient, url: str, **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/subscriptions", json={"url": url, **extra}, headers=auth())
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _webhook(client: httpx.AsyncClient, secret: str, event_type: str, resource_id: str) -> None:
    body, headers = signed_webhook(secret, event_type, resource_id)
    response = await client.post("/webhooks/openai", content=body, headers=headers)
    assert response.status_code == 200


async def _deliveries(client: httpx.AsyncClient, **query: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/deliveries", params={"limit": "100", **query}, headers=auth())
    assert response.status_code == 200
    return list(response.json()["data"])


async def test_deliveries_arrive_and_verify_with_every_library(tmp_path: Path) -> None:
    sub_server = Subscriber()
    s = make_settings(tmp_path)
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            sub = await _subscribe(client, f"{sub_url}/hook")
            assert (
                sub["secret"].startswith("whsec_") and sub["enabled"] is True and sub["id"].startswith("sub_")
            )
            await _webhook(client, s.webhook_secrets[0], "video.completed", "video_lib")
            await wait_until(lambda: _ready(sub_server.received))
            got = sub_server.received[0]
            event = got.event
            assert event["type"] == "video.completed" and event["object"] == "event"
            assert event["data"]["resource_id"] == "video_lib" and event["data"]["object"] == "job"
            assert got.headers["webhook-id"] == event["id"] and event["id"].startswith("evt_")
            standardwebhooks.Webhook(sub["secret"]).verify(got.body, got.headers)
            svix.Webhook(sub["secret"]).verify(got.body, got.headers)
            OpenAI(api_key="unused").webhooks.verify_signature(got.body, got.headers, secret=sub["secret"])

            async def settled() -> list[dict[str, Any]]:
                # The subscriber has the body before the sender has recorded the answer: wait for that.
                found = await _deliveries(client, subscription_id=sub["id"])
                return found if found and found[0]["status"] != "pending" else []

            [delivery] = await wait_until(settled)
            assert delivery["status"] == "succeeded" and delivery["attempts"][0]["status_code"] == 200


async def _ready(items: list[Any], n: int = 1) -> bool:
    return len(items) >= n


async def test_two_500s_then_200_is_three_attempts_and_succeeded(tmp_path: Path) -> None:
    sub_server = Subscriber()
    sub_server.script("/flaky", 500, 500, 200)
    s = make_settings(tmp_path)
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            sub = await _subscribe(client, f"{sub_url}/flaky")
            await _webhook(client, s.webhook_secrets[0], "video.failed", "video_flaky")

            async def succeeded() -> list[dict[str, Any]]:
                found = await _deliveries(client, subscription_id=sub["id"], status="succeeded")
                return found

            [delivery] = await wait_until(succeeded)
            assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
            assert len({r.headers["webhook-id"] for r in sub_server.on("/flaky")}) == 1
            assert len(sub_server.on("/flaky")) == 3


async def test_last_failure_makes_the_delivery_dead_and_manual_retry_revives_it(tmp_path: Path) -> None:
    sub_server = Subscriber()
    sub_server.defaults["/down"] = 503
    s = make_settings(tmp_path)
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            sub = await _subscribe(client, f"{sub_url}/down")
            await _webhook(client, s.webhook_secrets[0], "video.completed", "video_dead")
            [dead] = await wait_until(lambda: _deliveries(client, subscription_id=sub["id"], status="dead"))
            assert len(dead["attempts"]) == len(s.retry_schedule)
            sub_server.defaults["/down"] = 200
            response = await client.post(f"/v1/deliveries/{dead['id']}/retry", headers=auth())
            assert response.status_code == 202
            [ok] = await wait_until(
                lambda: _deliveries(client, subscription_id=sub["id"], status="succeeded")
            )
            assert ok["id"] == dead["id"] and ok["attempts"][-1]["status_code"] == 200
            again = await client.post(f"/v1/deliveries/{dead['id']}/retry", headers=auth())
            assert again.status_code == 409
            assert (await client.post("/v1/deliveries/dlv_nope/retry", headers=auth())).status_code == 404


async def test_410_disables_the_subscription(tmp_path: Path) -> None:
    sub_server = Subscriber()
    sub_server.defaults["/gone"] = 410
    s = make_settings(tmp_path)
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            sub = await _subscribe(client, f"{sub_url}/gone")
            other = await _subscribe(client, f"{sub_url}/other")
            await _webhook(client, s.webhook_secrets[0], "video.completed", "video_gone")

            async def disabled() -> bool:
                current = (await client.get(f"/v1/subscriptions/{sub['id']}", headers=auth())).json()
                return current["enabled"] is False

            await wait_until(disabled)
            # The others hear about it.
            await wait_until(lambda: _has_type(sub_server, "/other", "sorahook.subscription.disabled"))
            await _webhook(client, s.webhook_secrets[0], "video.completed", "video_after")
            await wait_until(lambda: _ready(sub_server.on("/other"), 3))
            assert len(sub_server.on("/gone")) == 1
            del other


async def _has_type(server: Subscriber, path: str, event_type: str) -> bool:
    return any(r.event["type"] == event_type for r in server.on(path))


async def test_a_hanging_subscriber_does_not_delay_another(tmp_path: Path) -> None:
    sub_server = Subscriber()
    sub_server.hanging.add("/hang")
    s = make_settings(tmp_path, delivery_timeout=30.0, per_subscription_concurrency=4)
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            await _subscribe(client, f"{sub_url}/hang")
            await _subscribe(client, f"{sub_url}/fast")
            for i in range(30):
                await _webhook(client, s.webhook_secrets[0], "video.completed", f"video_iso{i}")
            # Every event reaches the fast subscriber while the hanging one still holds its first requests.
            await wait_until(lambda: _ready(sub_server.on("/fast"), 30))
            assert len(sub_server.on("/hang")) <= 4
            sub_server.release.set()
            await wait_until(lambda: _ready(sub_server.on("/hang"), 30))


async def test_event_type_filters_exact_and_prefix(tmp_path: Path) -> None:
    sub_server = Subscriber()
    s = make_settings(tmp_path)
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            await _subscribe(client, f"{sub_url}/failed", event_types=["video.failed"])
            await _subscribe(client, f"{sub_url}/video", event_types=["video.*"])
            await _subscribe(client, f"{sub_url}/batch", event_types=["batch.*"])
            await _subscribe(client, f"{sub_url}/all")
            await _webhook(client, s.webhook_secrets[0], "video.completed", "video_f1")
            await _webhook(client, s.webhook_secrets[0], "video.failed", "video_f2")
            await _webhook(client, s.webhook_secrets[0], "batch.completed", "batch_f3")
            await _webhook(client, s.webhook_secrets[0], "eval.run.succeeded", "evalrun_f4")
            await wait_until(lambda: _ready(sub_server.on("/all"), 4))
            await wait_until(lambda: _ready(sub_server.on("/video"), 2))
            await asyncio.sleep(0.2)
            assert [r.event["type"] for r in sub_server.on("/failed")] == ["video.failed"]
            assert sorted(r.event["type"] for r in sub_server.on("/video")) == [
                "video.completed",
                "video.failed",
            ]
            assert [r.event["type"] for r in sub_server.on("/batch")] == ["batch.completed"]
            passthrough = [r.event for r in sub_server.on("/all") if r.event["type"] == "eval.run.succeeded"]
            assert passthrough[0]["data"] == {"id": "evalrun_f4"}
            bad = await client.post(
                "/v1/subscriptions", json={"url": f"{sub_url}/x", "event_types": ["vid*eo"]}, headers=auth()
            )
            assert bad.status_code == 422 and bad.json()["error"]["param"] == "event_types"


async def test_rotation_signs_with_old_and_new_secret(tmp_path: Path) -> None:
    sub_server = Subscriber()
    s = make_settings(tmp_path)
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            sub = await _subscribe(client, f"{sub_url}/rot")
            rotated = (
                await client.post(f"/v1/subscriptions/{sub['id']}/rotate-secret", headers=auth())
            ).json()
            assert rotated["secret"] != sub["secret"]
            assert rotated["previous_secret_expires_at"] >= int(time.time()) + 24 * 3600 - 5
            await _webhook(client, s.webhook_secrets[0], "video.completed", "video_rot")
            await wait_until(lambda: _ready(sub_server.received))
            got = sub_server.received[0]
            assert len(got.headers["webhook-signature"].split(" ")) == 2
            standardwebhooks.Webhook(sub["secret"]).verify(got.body, got.headers)
            standardwebhooks.Webhook(rotated["secret"]).verify(got.body, got.headers)


async def test_replay_and_test_event(tmp_path: Path) -> None:
    sub_server = Subscriber()
    s = make_settings(tmp_path)
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            since = int(time.time()) - 1
            await _webhook(client, s.webhook_secrets[0], "video.completed", "video_rp1")
            await _webhook(client, s.webhook_secrets[0], "video.failed", "video_rp2")
            # Subscribed after the fact: replay brings the earlier events.
            sub = await _subscribe(client, f"{sub_url}/late", event_types=["video.*"])
            other = await _subscribe(client, f"{sub_url}/other")
            response = await client.post(
                f"/v1/subscriptions/{sub['id']}/replay", json={"since": since}, headers=auth()
            )
            assert response.status_code == 202 and response.json()["enqueued"] == 2
            await wait_until(lambda: _ready(sub_server.on("/late"), 2))
            assert sorted(r.event["data"]["resource_id"] for r in sub_server.on("/late")) == [
                "video_rp1",
                "video_rp2",
            ]
            tested = await client.post(f"/v1/subscriptions/{sub['id']}/test", headers=auth())
            assert tested.status_code == 202
            await wait_until(lambda: _has_type(sub_server, "/late", "sorahook.test"))
            await asyncio.sleep(0.1)
            assert sub_server.on("/other") == []
            bad = await client.post(
                f"/v1/subscriptions/{sub['id']}/replay", json={"since": "yesterday"}, headers=auth()
            )
            assert bad.status_code == 422
            del other


async def test_replay_until_enqueues_only_the_events_of_the_range(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, clock=clock, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        start = clock.now()
        for i in range(3):  # emitted at start, start + 100 and start + 200
            await _webhook(client, s.webhook_secrets[0], "video.completed", f"video_range{i}")
            # A read sees every webhook acknowledged before it, so the event is emitted before the clock moves.
            assert (await client.get(f"/v1/jobs/video_range{i}", headers=auth())).status_code == 200
            clock.advance(100)
        sub = await _subscribe(client, "http://127.0.0.1:9/range")
        path = f"/v1/subscriptions/{sub['id']}/replay"
        response = await client.post(path, json={"since": start + 50, "until": start + 200}, headers=auth())
        assert response.status_code == 202 and response.json()["enqueued"] == 1  # until is exclusive
        listed = await client.get("/v1/deliveries", params={"subscription_id": sub["id"]}, headers=auth())
        [delivery] = listed.json()["data"]
        job = await client.get(f"/v1/jobs/{delivery['job_id']}", headers=auth())
        assert job.json()["resource_id"] == "video_range1"
        for bad in ({"until": start + 50}, {"until": start}, {"until": "later"}, {"until": True}):
            refused = await client.post(path, json={"since": start + 50, **bad}, headers=auth())
            assert refused.status_code == 422 and refused.json()["error"]["param"] == "until", bad


async def test_subscription_crud(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        sub = await _subscribe(client, "http://127.0.0.1:9/a", description="first")
        listed = (await client.get("/v1/subscriptions", headers=auth())).json()
        assert [x["id"] for x in listed["data"]] == [sub["id"]] and "secret" not in listed["data"][0]
        patched = await client.patch(
            f"/v1/subscriptions/{sub['id']}",
            json={"enabled": False, "event_types": ["video.*"], "description": "second"},
            headers=auth(),
        )
        assert patched.status_code == 200
        assert patched.json()["enabled"] is False and patched.json()["event_types"] == ["video.*"]
        bad = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"secret": "x"}, headers=auth())
        assert bad.status_code == 422
        assert (await client.delete(f"/v1/subscriptions/{sub['id']}", headers=auth())).status_code == 200
        assert (await client.get(f"/v1/subscriptions/{sub['id']}", headers=auth())).status_code == 404
        for body in ({}, {"url": "ftp://x"}, {"url": "http://"}, {"url": 7}):
            response = await client.post("/v1/subscriptions", json=body, headers=auth())
            assert response.status_code == 422, body


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f.1/",
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://internal.example/hook",
    ],
)
async def test_private_targets_are_refused_at_creation(tmp_path: Path, url: str) -> None:
    resolver = ssrf.StaticResolver({"internal.example": ["10.1.2.3"]})
    s = make_settings(tmp_path, allow_private_targets=False)
    async with live_server(create_app(s, resolver=resolver, start_workers=False)) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            response = await client.post("/v1/subscriptions", json={"url": url}, headers=auth())
            assert response.status_code == 422
            assert response.json()["error"]["code"] == "invalid_url"
            job = await client.post("/v1/jobs", json={"prompt": "x", "callback_url": url}, headers=auth())
            assert job.status_code == 422 and job.json()["error"]["param"] == "callback_url"


class _SwitchingResolver:
    """Public at creation, loopback at delivery: the name must be checked again when sending."""

    def __init__(self) -> None:
        self.table: dict[str, list[str]] = {"hooks.example": ["93.184.216.34"]}

    async def resolve(self, host: str, port: int) -> list[str]:
        if host in self.table:
            return self.table[host]
        ip = ssrf.literal_ip(host)
        if ip is None:
            raise ssrf.ResolveError(f"cannot resolve {host}")
        return [ip]


async def test_a_name_that_turns_private_is_refused_at_delivery(tmp_path: Path) -> None:
    sub_server = Subscriber()
    resolver = _SwitchingResolver()
    s = make_settings(tmp_path, allow_private_targets=False)
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s, resolver=resolver)) as url:
        port = httpx.URL(sub_url).port
        async with httpx.AsyncClient(base_url=url) as client:
            sub = await _subscribe(client, f"http://hooks.example:{port}/hook")
            resolver.table["hooks.example"] = ["127.0.0.1"]
            await _webhook(client, s.webhook_secrets[0], "video.completed", "video_rebind")

            async def attempted() -> list[dict[str, Any]]:
                found = await _deliveries(client, subscription_id=sub["id"])
                return [d for d in found if d["attempts"]]

            [delivery] = await wait_until(attempted)
            assert delivery["status"] in ("failed", "dead")
            assert "loopback" in delivery["attempts"][0]["error"]
            assert sub_server.received == []


async def test_callback_url_gets_the_jobs_events_signed_with_the_callback_secret(tmp_path: Path) -> None:
    sub_server = Subscriber()
    async with live_server(sub_server.app()) as sub_url:
        async with (
            emulated_service(tmp_path) as (url, _, settings),
            httpx.AsyncClient(base_url=url) as client,
        ):
            job = (
                await client.post(
                    "/v1/jobs", json={"prompt": "call me", "callback_url": f"{sub_url}/cb"}, headers=auth()
                )
            ).json()
            await wait_until(lambda: _has_type(sub_server, "/cb", "video.completed"), timeout=15)
            types = [r.event["type"] for r in sub_server.on("/cb")]
            assert types[0] == "video.queued" and "video.completed" in types
            for got in sub_server.on("/cb"):
                assert settings.callback_secret is not None
                standardwebhooks.Webhook(settings.callback_secret).verify(got.body, got.headers)
                assert got.event["data"]["id"] == job["id"]


async def test_ordered_subscription_gets_a_jobs_events_in_sequence(tmp_path: Path) -> None:
    sub_server = Subscriber()
    sub_server.script("/ordered", 500, 500)  # the first event fails twice; the second must wait for it
    async with live_server(sub_server.app()) as sub_url:
        async with (
            emulated_service(tmp_path, retry_schedule=(0.0, 0.3, 0.3, 0.3)) as (url, _, _s),
            httpx.AsyncClient(base_url=url) as client,
        ):
            await _subscribe(client, f"{sub_url}/ordered", ordered=True)
            job = (await client.post("/v1/jobs", json={"prompt": "in order"}, headers=auth())).json()

            async def delivered_both() -> bool:
                ok = [r for r in sub_server.on("/ordered")]
                return len(ok) >= 4

            await wait_until(delivered_both, timeout=20)
            sequence = [(r.event["type"], r.event["data"]["sequence"]) for r in sub_server.on("/ordered")]
            assert sequence[:3] == [("video.queued", 1)] * 3
            assert sequence[3] == ("video.completed", 2)
            del job


async def test_retry_after_from_a_subscriber_is_honoured(tmp_path: Path) -> None:
    sub_server = Subscriber()
    sub_server.script("/busy", (429, {"retry-after": "3"}))
    s = make_settings(tmp_path, retry_schedule=(0.0, 0.05, 5.0))
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            sub = await _subscribe(client, f"{sub_url}/busy")
            await _webhook(client, s.webhook_secrets[0], "video.completed", "video_busy")
            [failed] = await wait_until(
                lambda: _deliveries(client, subscription_id=sub["id"], status="failed")
            )
            assert failed["next_attempt_at"] >= failed["attempts"][0]["attempted_at"] + 2


async def test_endpoint_failing_for_too_long_is_disabled_and_others_told(tmp_path: Path) -> None:
    sub_server = Subscriber()
    sub_server.defaults["/broken"] = 500
    s = make_settings(tmp_path, retry_schedule=(0.0, 0.2, 0.2, 0.2, 0.2), disable_after=0.3)
    async with live_server(sub_server.app()) as sub_url, live_server(create_app(s)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            broken = await _subscribe(client, f"{sub_url}/broken")
            await _subscribe(client, f"{sub_url}/watcher", event_types=["sorahook.*"])
            await _webhook(client, s.webhook_secrets[0], "video.completed", "video_broken")
            await wait_until(lambda: _has_type(sub_server, "/watcher", "sorahook.subscription.disabled"))
            notice = next(r.event for r in sub_server.on("/watcher"))
            assert notice["data"]["id"] == broken["id"] and notice["data"]["enabled"] is False
            current = (await client.get(f"/v1/subscriptions/{broken['id']}", headers=auth())).json()
            assert current["enabled"] is False and current["disabled_reason"]
            assert current["disabled_reason"] != ""


async def test_subscription_secrets_are_sealed_at_rest(tmp_path: Path) -> None:
    import sqlite3

    s = make_settings(tmp_path)
    async with (
        live_server(create_app(s, start_workers=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        sub = await _subscribe(client, "http://127.0.0.1:9/sealed")
        rotated = (await client.post(f"/v1/subscriptions/{sub['id']}/rotate-secret", headers=auth())).json()
        read = (await client.get(f"/v1/subscriptions/{sub['id']}", headers=auth())).json()
        assert read["secret"] == rotated["secret"]
    raw = (
        sqlite3.connect(s.database_path)
        .execute("SELECT secret, previous_secret FROM subscriptions")
        .fetchone()
    )
    dump = "\n".join(sqlite3.connect(s.database_path).iterdump())
    assert sub["secret"] not in dump and rotated["secret"] not in dump
    assert raw[0].startswith("sealed:v2:") and raw[1].startswith("sealed:v2:")
