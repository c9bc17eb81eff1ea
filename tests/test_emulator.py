"""The Videos API emulator, driven by the official openai SDK and a real webhook receiver over loopback."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from openai.types import Video
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from service.clock import ManualClock
from service.emulator import Emulator, EmulatorConfig

SECRET = "whsec_" + "c29yYWhvb2stZW11bGF0b3ItdGVzdC1zZWNyZXQ="
DURATION = 10.0

# The SDK marks every videos.* method deprecated (the Sora API shuts down 2026-09-24); the emulator outlives it.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serve(app: ASGIApp, *, lifespan: str = "off") -> AsyncIterator[int]:
    """Run ``app`` under uvicorn on an ephemeral loopback port; yield the port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


@dataclass
class Receiver:
    """A webhook endpoint that records what it gets and answers with scripted statuses."""

    statuses: list[int] = field(default_factory=list)  # answers to use first; then 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def hook(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        status = self.statuses.pop(0) if self.statuses else 200
        return JSONResponse({"ok": status < 300}, status_code=status)


@dataclass
class Env:
    emulator: Emulator
    clock: ManualClock
    client: openai.AsyncOpenAI
    http: httpx.AsyncClient
    receiver: Receiver
    port: int


@asynccontextmanager
async def emulator_env(
    *, webhooks: bool = True, api_key: str | None = None, lifespan: str = "off", **knobs: Any
) -> AsyncIterator[Env]:
    # The clock starts at the real time because webhook verifiers compare webhook-timestamp with it.
    clock = ManualClock(start=float(int(time.time())))
    receiver = Receiver()
    async with serve(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as hook_port:
        receiver.url = f"http://127.0.0.1:{hook_port}/hook"
        config = EmulatorConfig(
            webhook_url=receiver.url if webhooks else None,
            webhook_secret=SECRET,
            duration=DURATION,
            api_key=api_key,
            seed=7,
            **knobs,
        )
        emulator = Emulator(config, clock=clock)
        async with serve(emulator.app, lifespan=lifespan) as port:
            base = f"http://127.0.0.1:{port}"
            client = openai.AsyncOpenAI(api_key=api_key or "x", base_url=f"{base}/v1", max_retries=2)
            async with httpx.AsyncClient(base_url=base) as http:
                yield Env(emulator, clock, client, http, receiver, port)
            await client.close()
        await emulator.aclose()


async def finish(env: Env, seconds: float = DURATION) -> None:
    env.clock.advance(seconds)
    await env.emulator.run_once()


def assert_exact_video(data: dict[str, Any]) -> Video:
    video = Video.model_validate(data, strict=True)
    required = {name for name, f in Video.model_fields.items() if f.is_required()}
    assert required <= set(data) <= set(Video.model_fields)
    assert video.model_extra in (None, {})
    return video


# --- object shapes and lifecycle --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sdk_create_returns_a_queued_video_in_openais_exact_shape() -> None:
    async with emulator_env() as env:
        video = await env.client.videos.create(prompt="a fox in the snow", seconds="8", size="1280x720")
        assert video.id.startswith("video_")
        assert (video.status, video.progress, video.model, video.seconds, video.size) == (
            "queued",
            0,
            "sora-2",
            "8",
            "1280x720",
        )
        assert video.created_at == int(env.clock.now())
        raw = (await env.http.get(f"/v1/videos/{video.id}")).json()
        assert_exact_video(raw)
        assert set(raw) == set(Video.model_fields)
        assert env.emulator.calls == [("POST", "/v1/videos"), ("GET", f"/v1/videos/{video.id}")]


@pytest.mark.anyio
async def test_create_accepts_json_and_int_seconds_and_a_reference_file() -> None:
    async with emulator_env() as env:
        response = await env.http.post(
            "/v1/videos", json={"prompt": "waves", "seconds": 12, "model": "sora-2-pro"}
        )
        assert response.status_code == 200
        assert (response.json()["seconds"], response.json()["model"]) == ("12", "sora-2-pro")
        with_file = await env.client.videos.create(
            prompt="animate this", input_reference=("ref.jpg", b"\xff\xd8\xff\xd9", "image/jpeg")
        )
        assert with_file.status == "queued"


@pytest.mark.anyio
async def test_video_moves_queued_then_in_progress_then_completed_on_the_clock() -> None:
    async with emulator_env(asset_ttl=600) as env:
        video = await env.client.videos.create(prompt="a sunrise")
        env.clock.advance(DURATION * 0.05)
        assert (await env.client.videos.retrieve(video.id)).status == "queued"
        progress = []
        for _ in range(4):
            env.clock.advance(DURATION * 0.2)
            current = await env.client.videos.retrieve(video.id)
            assert current.status == "in_progress"
            progress.append(current.progress)
        assert progress == sorted(progress) and progress[0] < progress[-1] <= 99
        assert env.emulator.videos[video.id]["status"] == "in_progress"
        env.clock.advance(DURATION)
        done = await env.client.videos.retrieve(video.id)
        assert (done.status, done.progress, done.error) == ("completed", 100, None)
        assert done.completed_at == video.created_at + int(DURATION)
        assert done.expires_at == done.completed_at + 600


# --- webhooks ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_completed_video_sends_one_signed_webhook_that_the_sdk_and_standardwebhooks_verify() -> None:
    async with emulator_env() as env:
        video = await env.client.videos.create(prompt="a lighthouse")
        await env.emulator.run_once()
        assert env.receiver.received == []
        await finish(env)
        await env.emulator.run_once()  # nothing left to send
        assert len(env.receiver.received) == 1
        headers, body = env.receiver.received[0]
        env.client.webhooks.verify_signature(body, headers, secret=SECRET)
        assert Webhook(SECRET).verify(body, headers)["data"] == {"id": video.id}
        event = json.loads(body)
        assert set(event) == {"id", "object", "created_at", "type", "data"}
        assert event["id"].startswith("evt_") and event["object"] == "event"
        assert event["type"] == "video.completed" and isinstance(event["created_at"], int)
        assert headers["webhook-id"].startswith("wh_")
        assert headers["webhook-timestamp"] == str(int(env.clock.now()))
        assert env.emulator.webhooks_sent == [
            {
                "webhook_id": headers["webhook-id"],
                "type": "video.completed",
                "video_id": video.id,
                "status_code": 200,
            }
        ]
        with pytest.raises(openai.InvalidWebhookSignatureError):
            env.client.webhooks.verify_signature(body + b" ", headers, secret=SECRET)


@pytest.mark.anyio
async def test_fail_marker_ends_failed_with_an_error_and_a_failed_webhook() -> None:
    async with emulator_env() as env:
        video = await env.client.videos.create(prompt="a storm [fail]")
        await finish(env)
        failed = await env.client.videos.retrieve(video.id)
        assert failed.status == "failed" and failed.error is not None
        assert failed.error.code == "video_generation_failed" and failed.expires_at is None
        assert_exact_video((await env.http.get(f"/v1/videos/{video.id}")).json())
        (_, body), *rest = env.receiver.received
        assert rest == [] and json.loads(body)["type"] == "video.failed"
        content = await env.http.get(f"/v1/videos/{video.id}/content")
        assert content.status_code == 400


@pytest.mark.anyio
async def test_failure_rate_one_fails_every_video() -> None:
    async with emulator_env(failure_rate=1.0) as env:
        videos = [await env.client.videos.create(prompt=f"clip {i}") for i in range(3)]
        await finish(env)
        assert {(await env.client.videos.retrieve(v.id)).status for v in videos} == {"failed"}


@pytest.mark.anyio
async def test_drop_rate_one_sends_no_webhook_but_the_video_still_completes() -> None:
    async with emulator_env(drop_rate=1.0) as env:
        video = await env.client.videos.create(prompt="a quiet lake")
        await finish(env)
        await finish(env)
        assert env.receiver.received == [] and env.emulator.webhooks_sent == []
        assert env.emulator.webhooks_dropped == [video.id]
        assert (await env.client.videos.retrieve(video.id)).status == "completed"


@pytest.mark.anyio
async def test_duplicate_rate_one_sends_the_same_webhook_id_twice() -> None:
    async with emulator_env(duplicate_rate=1.0) as env:
        await env.client.videos.create(prompt="twins")
        await finish(env)
        assert len(env.receiver.received) == 2
        (first_headers, first_body), (second_headers, second_body) = env.receiver.received
        assert first_headers["webhook-id"] == second_headers["webhook-id"]
        assert first_body == second_body
        for headers, body in env.receiver.received:
            env.client.webhooks.verify_signature(body, headers, secret=SECRET)


@pytest.mark.anyio
async def test_failed_webhook_is_retried_after_a_backoff_with_the_same_id() -> None:
    async with emulator_env() as env:
        env.receiver.statuses = [500, 503]
        video = await env.client.videos.create(prompt="retry me")
        await finish(env)
        await env.emulator.run_once()  # the backoff has not passed yet
        assert [s["status_code"] for s in env.emulator.webhooks_sent] == [500]
        await finish(env, 1.0)
        await finish(env, 5.0)
        await finish(env, 60.0)
        assert [s["status_code"] for s in env.emulator.webhooks_sent] == [500, 503, 200]
        assert {h["webhook-id"] for h, _ in env.receiver.received} == {
            env.emulator.webhooks_sent[0]["webhook_id"]
        }
        assert {s["video_id"] for s in env.emulator.webhooks_sent} == {video.id}
        for headers, body in env.receiver.received:
            env.client.webhooks.verify_signature(body, headers, secret=SECRET)


@pytest.mark.anyio
async def test_unreachable_webhook_url_is_retried_a_few_times_then_given_up_without_crashing() -> None:
    async with serve(Starlette()) as closed_port:
        pass  # the port is now closed: connections are refused
    clock = ManualClock(start=float(int(time.time())))
    config = EmulatorConfig(
        webhook_url=f"http://127.0.0.1:{closed_port}/hook", webhook_secret=SECRET, duration=1
    )
    emulator = Emulator(config, clock=clock)
    try:
        async with serve(emulator.app) as port:
            async with openai.AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{port}/v1") as client:
                await client.videos.create(prompt="into the void")
            for _ in range(10):
                clock.advance(60)
                await emulator.run_once()
        assert 2 <= len(emulator.webhooks_sent) <= 6
        assert {s["status_code"] for s in emulator.webhooks_sent} == {None}
    finally:
        await emulator.aclose()


@pytest.mark.anyio
async def test_no_webhook_url_sends_nothing() -> None:
    async with emulator_env(webhooks=False) as env:
        await env.client.videos.create(prompt="silent")
        await finish(env)
        assert env.emulator.webhooks_sent == [] and env.receiver.received == []


@pytest.mark.anyio
async def test_standalone_lifespan_runs_the_ticker_that_sends_webhooks() -> None:
    async with emulator_env(lifespan="on") as env:
        video = await env.client.videos.create(prompt="ticking")
        env.clock.advance(DURATION)
        for _ in range(500):
            if env.receiver.received:
                break
            await asyncio.sleep(0.01)
        (_, body), *rest = env.receiver.received
        assert json.loads(body)["data"]["id"] == video.id and rest == []


@pytest.mark.anyio
async def test_a_slow_webhook_receiver_does_not_block_api_requests() -> None:
    gate = asyncio.Event()

    async def slow(request: Request) -> Response:
        await gate.wait()
        return Response(status_code=200)

    async with serve(Starlette(routes=[Route("/hook", slow, methods=["POST"])])) as hook_port:
        clock = ManualClock(start=float(int(time.time())))
        config = EmulatorConfig(webhook_url=f"http://127.0.0.1:{hook_port}/hook", webhook_secret=SECRET)
        emulator = Emulator(config, clock=clock)
        async with serve(emulator.app) as port:
            async with openai.AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{port}/v1") as client:
                video = await client.videos.create(prompt="slow receiver")
                clock.advance(DURATION)
                tick = asyncio.create_task(emulator.run_once())
                second_tick = asyncio.create_task(emulator.run_once())
                await asyncio.sleep(0.05)
                assert not tick.done()
                assert (await client.videos.retrieve(video.id)).status == "completed"
                gate.set()
                await asyncio.wait_for(asyncio.gather(tick, second_tick), 5)
        await emulator.aclose()
    assert [s["status_code"] for s in emulator.webhooks_sent] == [200]


# --- validation, moderation, idempotency, auth ------------------------------------------------------------


@pytest.mark.anyio
async def test_moderation_marker_is_rejected_with_moderation_blocked() -> None:
    async with emulator_env() as env:
        with pytest.raises(openai.BadRequestError) as caught:
            await env.client.videos.create(prompt="something [moderation] unsafe")
        assert caught.value.code == "moderation_blocked"
        assert caught.value.type == "invalid_request_error"
        assert env.emulator.videos == {}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "seconds": "5"}, "seconds"),
        ({"prompt": "x", "seconds": True}, "seconds"),
        ({"prompt": "x", "size": "640x480"}, "size"),
        ({"prompt": "x", "model": ""}, "model"),
    ],
)
async def test_bad_create_input_gets_openais_400_envelope(body: dict[str, Any], param: str) -> None:
    async with emulator_env() as env:
        response = await env.http.post("/v1/videos", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["param"]) == ("invalid_request_error", param)
        with pytest.raises(openai.BadRequestError):
            await env.client.videos.create(prompt="x", extra_body={"size": "640x480"})


@pytest.mark.anyio
@pytest.mark.parametrize("raw", [b'{"prompt": "a \\ud800 fox"}', b"[" * 100_000 + b"]" * 100_000])
async def test_a_body_no_json_answer_can_hold_gets_a_400_not_a_reset(raw: bytes) -> None:
    # A lone surrogate parses but cannot be encoded back; deep nesting exhausts the parser's recursion.
    async with emulator_env() as env:
        response = await env.http.post(
            "/v1/videos", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert env.emulator.videos == {}


@pytest.mark.anyio
async def test_the_same_idempotency_key_returns_the_same_video() -> None:
    async with emulator_env() as env:
        first = await env.client.videos.create(prompt="once", extra_headers={"Idempotency-Key": "k-1"})
        again = await env.client.videos.create(prompt="once", extra_headers={"Idempotency-Key": "k-1"})
        other = await env.client.videos.create(prompt="once", extra_headers={"Idempotency-Key": "k-2"})
        assert first.id == again.id != other.id
        assert len(env.emulator.videos) == 2


@pytest.mark.anyio
async def test_api_key_is_enforced_with_openais_401() -> None:
    async with emulator_env(api_key="sk-right") as env:
        video = await env.client.videos.create(prompt="authorised")
        async with openai.AsyncOpenAI(
            api_key="sk-wrong", base_url=f"http://127.0.0.1:{env.port}/v1"
        ) as wrong:
            with pytest.raises(openai.AuthenticationError) as caught:
                await wrong.videos.retrieve(video.id)
        assert caught.value.code == "invalid_api_key"
        missing = await env.http.get(f"/v1/videos/{video.id}")
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "invalid_request_error"
        assert (await env.http.get("/_control/calls")).status_code == 200


# --- faults ---------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_two_injected_500s_are_retried_by_the_sdk_and_visible_in_calls() -> None:
    async with emulator_env() as env:
        env.emulator.inject_fault(500, 2, retry_after=0.01)
        video = await env.client.videos.create(prompt="persistent")
        assert video.status == "queued"
        assert env.emulator.calls == [("POST", "/v1/videos")] * 3
        assert len(env.emulator.videos) == 1
        calls = (await env.http.get("/_control/calls")).json()["calls"]
        assert calls == [["POST", "/v1/videos"]] * 3


@pytest.mark.anyio
async def test_injected_429_carries_code_and_retry_after_and_faults_are_fifo() -> None:
    async with emulator_env() as env:
        env.emulator.inject_fault(429, retry_after=2)
        env.emulator.inject_fault(429, code="insufficient_quota")
        env.emulator.inject_fault(503, path_prefix="/v1/videos/nope")
        first = await env.http.get("/v1/videos")
        assert first.status_code == 429 and first.headers["retry-after"] == "2"
        assert first.json()["error"]["code"] == "rate_limit_exceeded"
        second = await env.http.get("/v1/videos")
        assert second.json()["error"]["code"] == "insufficient_quota" and "retry-after" not in second.headers
        assert (await env.http.get("/v1/videos")).status_code == 200
        assert (await env.http.get("/v1/videos/nope")).status_code == 503


@pytest.mark.anyio
async def test_control_route_injects_faults_and_is_never_faulted_itself() -> None:
    async with emulator_env(error_rate=1.0) as env:
        queued = await env.http.post("/_control/faults", json={"status": 503, "count": 2, "retry_after": 1})
        assert queued.status_code == 200
        responses = [await env.http.get("/v1/videos") for _ in range(2)]
        assert [r.status_code for r in responses] == [503, 503]
        assert all(r.headers["retry-after"] == "1" for r in responses)
        random_errors = {(await env.http.get("/v1/videos")).status_code for _ in range(30)}
        assert random_errors <= {429, 500, 503} and 429 in random_errors
        assert (await env.http.get("/_control/calls")).status_code == 200
        assert len(env.emulator.calls) == 32
        bad = await env.http.post("/_control/faults", json={"count": 1})
        assert bad.status_code == 400


# --- list, remix, content, delete -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_list_paginates_newest_first_and_in_ascending_order() -> None:
    async with emulator_env() as env:
        ids = []
        for i in range(5):
            ids.append((await env.client.videos.create(prompt=f"clip {i}")).id)
            env.clock.advance(1 if i % 2 else 0)  # some share a created_at second
        page = await env.client.videos.list(limit=2)
        assert [v.id for v in page.data] == ids[::-1][:2] and page.has_more
        assert [v.id async for v in env.client.videos.list(limit=2)] == ids[::-1]
        assert [v.id async for v in env.client.videos.list(limit=3, order="asc")] == ids
        raw = (await env.http.get("/v1/videos", params={"limit": 2, "after": ids[3]})).json()
        assert set(raw) == {"object", "data", "first_id", "last_id", "has_more"}
        assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (ids[2], ids[1], True)
        for item in raw["data"]:
            assert_exact_video(item)
        assert (await env.http.get("/v1/videos", params={"limit": 101})).status_code == 400


@pytest.mark.anyio
async def test_remix_makes_a_new_video_from_a_completed_one() -> None:
    async with emulator_env() as env:
        source = await env.client.videos.create(
            prompt="a cat", seconds="12", size="1024x1792", model="sora-2-pro"
        )
        with pytest.raises(openai.BadRequestError):
            await env.client.videos.remix(source.id, prompt="too early")
        await finish(env)
        remix = await env.client.videos.remix(source.id, prompt="a cat, in watercolour")
        assert remix.id != source.id and remix.remixed_from_video_id == source.id
        assert (remix.model, remix.seconds, remix.size, remix.status) == (
            "sora-2-pro",
            "12",
            "1024x1792",
            "queued",
        )
        assert_exact_video((await env.http.get(f"/v1/videos/{remix.id}")).json())
        with pytest.raises(openai.NotFoundError):
            await env.client.videos.remix("video_missing", prompt="x")


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> dict[bytes, tuple[int, int]]:
    boxes: dict[bytes, tuple[int, int]] = {}
    offset, end = start, len(data) if end is None else end
    while offset < end:
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        assert size >= 8 and offset + size <= end
        boxes[kind] = (offset + 8, offset + size)
        offset += size
    assert offset == end
    return boxes


def jpeg_size(data: bytes) -> tuple[int, int]:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    offset = 2
    while True:
        marker, length = struct.unpack(">HH", data[offset : offset + 4])
        if marker == 0xFFC0:
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        assert marker != 0xFFDA, "scan before frame header"
        offset += 2 + length


@pytest.mark.anyio
async def test_content_downloads_real_media_for_each_variant() -> None:
    async with emulator_env() as env:
        video = await env.client.videos.create(prompt="media")
        not_ready = await env.http.get(f"/v1/videos/{video.id}/content")
        assert not_ready.status_code == 400 and not_ready.json()["error"]["code"] == "video_not_ready"
        await finish(env)
        mp4 = (await env.client.videos.download_content(video.id)).content
        top = mp4_boxes(mp4)
        assert list(top) == [b"ftyp", b"moov", b"mdat"] and mp4[8:12] == b"isom"
        moov = mp4_boxes(mp4, *top[b"moov"])
        assert set(moov) == {b"mvhd", b"trak"}
        trak = mp4_boxes(mp4, *moov[b"trak"])
        mdia = mp4_boxes(mp4, *trak[b"mdia"])
        stbl = mp4_boxes(mp4, *mp4_boxes(mp4, *mdia[b"minf"])[b"stbl"])
        assert {b"stsd", b"stts", b"stsc", b"stsz", b"stco"} <= set(stbl)
        chunk_offset = struct.unpack(">I", mp4[stbl[b"stco"][1] - 4 : stbl[b"stco"][1]])[0]
        assert chunk_offset == top[b"mdat"][0]
        for variant in ("thumbnail", "spritesheet"):
            response = await env.http.get(f"/v1/videos/{video.id}/content", params={"variant": variant})
            assert response.headers["content-type"] == "image/jpeg"
            width, height = jpeg_size(response.content)
            assert width > 0 and height > 0
        sdk_thumb = await env.client.videos.download_content(video.id, variant="thumbnail")
        assert sdk_thumb.content[:2] == b"\xff\xd8"
        video_response = await env.http.get(f"/v1/videos/{video.id}/content")
        assert video_response.headers["content-type"] == "video/mp4"
        unknown = await env.http.get(f"/v1/videos/{video.id}/content", params={"variant": "gif"})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "variant"


@pytest.mark.anyio
async def test_content_is_gone_after_expires_at() -> None:
    async with emulator_env(asset_ttl=60) as env:
        video = await env.client.videos.create(prompt="fleeting")
        await finish(env)
        assert (await env.http.get(f"/v1/videos/{video.id}/content")).status_code == 200
        env.clock.advance(61)
        expired = await env.http.get(f"/v1/videos/{video.id}/content")
        assert expired.status_code == 410 and expired.json()["error"]["code"] == "video_expired"


@pytest.mark.anyio
async def test_delete_removes_the_video_and_later_reads_are_404() -> None:
    async with emulator_env() as env:
        video = await env.client.videos.create(prompt="ephemeral")
        deleted = await env.client.videos.delete(video.id)
        assert (deleted.id, deleted.object, deleted.deleted) == (video.id, "video.deleted", True)
        with pytest.raises(openai.NotFoundError) as caught:
            await env.client.videos.retrieve(video.id)
        assert caught.value.code == "not_found"
        with pytest.raises(openai.NotFoundError):
            await env.client.videos.delete(video.id)
        assert [v async for v in env.client.videos.list()] == []
        await finish(env)
        assert env.emulator.webhooks_sent == []


@pytest.mark.anyio
async def test_mounted_under_a_prefix_the_sdk_works_and_calls_record_relative_paths() -> None:
    emulator = Emulator(EmulatorConfig(), clock=ManualClock())
    parent = Starlette(routes=[Mount("/_emulator", app=emulator.app)])
    try:
        async with serve(parent) as port:
            base = f"http://127.0.0.1:{port}/_emulator"
            async with openai.AsyncOpenAI(api_key="x", base_url=f"{base}/v1") as client:
                video = await client.videos.create(prompt="mounted")
                assert (await client.videos.retrieve(video.id)).id == video.id
            async with httpx.AsyncClient() as http:
                calls = (await http.get(f"{base}/_control/calls")).json()["calls"]
        assert calls == [["POST", "/v1/videos"], ["GET", f"/v1/videos/{video.id}"]]
    finally:
        await emulator.aclose()


def test_config_rejects_rates_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="drop_rate"):
        EmulatorConfig(drop_rate=1.5)


# --- control routes behind a token, every knob bounded ------------------------------------------------------


@pytest.mark.anyio
async def test_control_routes_need_the_control_token_when_one_is_set() -> None:
    async with emulator_env(control_token="admin-token-123") as env:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic admin-token-123"}):
            faults = await env.http.post("/_control/faults", json={"status": 500}, headers=headers)
            assert faults.status_code == 401 and faults.headers["www-authenticate"] == "Bearer"
            assert (await env.http.get("/_control/calls", headers=headers)).status_code == 401
        assert env.emulator.pending_faults == 0
        good = {"authorization": "Bearer admin-token-123"}
        assert (
            await env.http.post("/_control/faults", json={"status": 500}, headers=good)
        ).status_code == 200
        assert (await env.http.get("/_control/calls", headers=good)).status_code == 200
        assert env.emulator.pending_faults == 1


@pytest.mark.anyio
async def test_control_knobs_out_of_range_get_422_and_change_nothing() -> None:
    async with emulator_env() as env:
        for fault in (
            {"status": 500, "count": 5_000_000},
            {"status": 500, "count": 0},
            {"status": 200},
            {"status": 600},
            {"status": 429, "retry_after": -1},
            {"status": 429, "retry_after": 1e9},
            {"status": 500, "code": "x" * 1000},
            {"status": 500, "path_prefix": "v1/"},
            {"status": 500, "path_prefix": "/" + "x" * 1000},
        ):
            response = await env.http.post("/_control/faults", json=fault)
            assert response.status_code == 422, (fault, response.text)
            assert response.json()["error"]["code"] == "out_of_range"
        nan = await env.http.post(
            "/_control/faults",
            content=b'{"status": 429, "retry_after": NaN}',
            headers={"content-type": "application/json"},
        )
        assert nan.status_code == 422
        assert (await env.http.post("/_control/faults", json={"status": True})).status_code == 400
        assert env.emulator.pending_faults == 0


@pytest.mark.anyio
async def test_a_fault_rule_is_one_counter_whatever_its_count() -> None:
    import tracemalloc

    async with emulator_env() as env:
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        queued = await env.http.post("/_control/faults", json={"status": 503, "count": 1_000_000})
        grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
        assert queued.status_code == 200 and queued.json() == {"queued": 1_000_000, "pending": 1_000_000}
        assert grown < 1_000_000  # a list of a million rules was ~60 MB
        assert [(await env.http.get("/v1/videos")).status_code for _ in range(3)] == [503] * 3
        assert env.emulator.pending_faults == 999_997
        rules = [{"status": 500, "path_prefix": f"/v1/x{i}"} for i in range(1000)]
        for rule in rules[1:]:
            assert (await env.http.post("/_control/faults", json=rule)).status_code == 200
        full = await env.http.post("/_control/faults", json=rules[0])
        assert full.status_code == 422 and "at most" in full.json()["error"]["message"]


def test_config_bounds_durations_and_sizes() -> None:
    for knobs in (
        {"duration": 1e9},  # the bounds: 30 days, 1 hour per chunk, 1 GiB
        {"duration": float("nan")},
        {"asset_ttl": -1.0},
        {"content_delay": 7200.0},
        {"content_size": 1 << 40},
    ):
        with pytest.raises(ValueError):
            EmulatorConfig(**knobs)


def test_the_call_record_keeps_only_the_newest_entries() -> None:
    from service.emulator.app import MAX_RECORDED, _record

    entries: list[int] = []
    for i in range(MAX_RECORDED * 3):
        _record(entries, i)
    assert len(entries) <= MAX_RECORDED and entries[-1] == MAX_RECORDED * 3 - 1
