"""The benchmarks' own helpers that a wrong figure could hide in."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from bench import loadgen, store_floor
from bench.loadgen import Mode
from bench.soak.subscribers import SubscriberApp
from service.app import create_app
from service.config import new_webhook_secret
from service.signing import Signer
from tests.support import live_server, make_settings


def test_the_store_floor_replays_exactly_what_the_write_path_wrote() -> None:
    figures = store_floor.measure(batch=8, webhooks=64)  # raises if the replayed file differs
    assert figures["webhooks"] == 64
    assert 0 < figures["sql_us"] and 0 < figures["store_us"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_loadgen_webhooks_are_each_accepted_by_the_real_receiver(tmp_path: Path, mode: Mode) -> None:
    settings = make_settings(tmp_path)
    async with live_server(create_app(settings, start_workers=False)) as url:
        port = int(url.rsplit(":", 1)[1])
        plan = loadgen.Plan(
            host="127.0.0.1",
            port=port,
            mode=mode,
            connections=4,
            duration=0.25,
            warmup=0.0,
            rate=120.0,
            capacity=30,  # the closed loop stops when these run out
            expect_status=200,
            expect_body=b'{"status":"accepted"}',
            server_pid=None,
        )
        result = await loadgen.run_plan(plan, settings.webhook_secrets[0])
    assert result.sent > 0
    assert result.errors == 0 and result.unexpected == []
    assert result.expected == result.sent


def _delivery(secret: str, msg_id: str, body: str, age: int = 0) -> dict[str, str]:
    return Signer().headers(msg_id, int(time.time()) - age, body, [secret])


@pytest.mark.anyio
async def test_soak_subscriber_counts_every_delivery_its_secret_did_not_sign() -> None:
    control, port = 9000, 9001
    app = SubscriberApp(control, {port: "healthy"}, hang=0.1, seed=1)
    secret, other = new_webhook_secret(), new_webhook_secret()
    body = '{"id":"evt_1","type":"video.completed","data":{"resource_id":"video_1"}}'
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as client:
        keys = await client.post(f"http://127.0.0.1:{control}/_soak/keys", json={str(port): secret})
        assert keys.status_code == 200
        hook = f"http://127.0.0.1:{port}/hook"
        good = await client.post(hook, content=body, headers=_delivery(secret, "evt_1", body))
        assert good.status_code == 200 and app.records[port].bad_signature == 0
        await client.post(hook, content=body, headers=_delivery(other, "evt_2", body))
        altered = _delivery(secret, "evt_3", body)
        await client.post(hook, content=body.replace("video_1", "video_2"), headers=altered)
        unsigned = {"webhook-id": "evt_4", "content-type": "application/json"}
        await client.post(hook, content=body, headers=unsigned)
        # A Standard Webhooks receiver refuses a signature made long ago, and the service signs each
        # attempt as it sends it.
        await client.post(hook, content=body, headers=_delivery(secret, "evt_5", body, age=3600))
    assert app.records[port].bad_signature == 4
    assert sum(app.records[port].received.values()) == 5
