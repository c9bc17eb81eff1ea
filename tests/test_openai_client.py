"""The OpenAI client against the Videos API emulator (in process and over loopback) and scripted servers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from service.clock import ManualClock
from service.domain import USER_MESSAGES
from service.emulator import Emulator, EmulatorConfig
from service.emulator.assets import CONTENT
from service.errors import PermanentOpenAIError, TransientOpenAIError
from service.metrics import Metrics
from service.openai_client import OpenAIClient

API_KEY = "sk-test-openai-client"
DURATION = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Sleeps:
    """The injected sleep: records what the client asked to wait, waits nothing."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Recorder(httpx.AsyncBaseTransport):
    """Wraps a real transport and keeps every request that went through it, body included."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Env:
    emulator: Emulator
    clock: ManualClock
    metrics: Metrics
    sleeps: Sleeps
    recorder: Recorder
    client: OpenAIClient

    def sample(self, operation: str, status: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "sorahook_openai_requests_total", {"operation": operation, "status": status}
        )
        return value or 0.0

    def create_calls(self) -> int:
        return self.emulator.calls.count(("POST", "/v1/videos"))


def make_client(
    base_url: str,
    transport: httpx.AsyncBaseTransport | None,
    *,
    metrics: Metrics | None = None,
    sleeps: Sleeps | None = None,
    api_key: str | None = API_KEY,
    **options: Any,
) -> OpenAIClient:
    return OpenAIClient(
        base_url=base_url,
        api_key=api_key,
        metrics=metrics or Metrics(),
        transport=transport,
        sleep=sleeps or Sleeps(),
        **options,
    )


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = ManualClock()
    emulator = Emulator(EmulatorConfig(webhook_url=None, duration=DURATION, api_key=API_KEY), clock=clock)
    metrics, sleeps = Metrics(), Sleeps()
    recorder = Recorder(httpx.ASGITransport(app=emulator.app))
    client = make_client("http://emulator/v1", recorder, metrics=metrics, sleeps=sleeps)
    try:
        yield Env(emulator, clock, metrics, sleeps, recorder, client)
    finally:
        await client.aclose()
        await emulator.aclose()


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
class Scripted:
    """An HTTP server that answers from a script, for what the emulator cannot say (odd headers, bodies)."""

    answers: list[Response]
    delay: float = 0.0
    seen: list[tuple[str, str]] = field(default_factory=list)

    @property
    def app(self) -> Starlette:
        async def endpoint(request: Request) -> Response:
            self.seen.append((request.method, request.url.path))
            if self.delay:
                await asyncio.sleep(self.delay)
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

        return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST", "DELETE"])])


def scripted_client(
    script: Scripted, sleeps: Sleeps, **options: Any
) -> tuple[OpenAIClient, Callable[[], list[tuple[str, str]]]]:
    client = make_client("http://provider/v1", httpx.ASGITransport(app=script.app), sleeps=sleeps, **options)
    return client, lambda: script.seen


async def completed_video(env: Env, prompt: str = "a red fox in the snow") -> dict[str, Any]:
    video = await env.client.create_video(
        prompt=prompt, model="sora-2", seconds="4", size="1280x720", idempotency_key=None
    )
    env.clock.advance(DURATION + 1)
    return await env.client.retrieve_video(video["id"])


# --- the Videos API end to end ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_is_sent_as_multipart_form_with_bearer_key_like_the_sdk(env: Env) -> None:
    video = await env.client.create_video(
        prompt="a lighthouse at dusk",
        model="sora-2-pro",
        seconds="8",
        size="1792x1024",
        idempotency_key="k-1",
    )

    assert video["object"] == "video" and video["status"] == "queued"
    assert (video["prompt"], video["model"], video["seconds"], video["size"]) == (
        "a lighthouse at dusk",
        "sora-2-pro",
        "8",
        "1792x1024",
    )
    [request] = env.recorder.requests
    assert (request.method, request.url.path) == ("POST", "/v1/videos")
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["idempotency-key"] == "k-1"
    for name, value in (("prompt", "a lighthouse at dusk"), ("model", "sora-2-pro"), ("seconds", "8")):
        assert f'name="{name}"\r\n\r\n{value}\r\n'.encode() in request.content


@pytest.mark.anyio
async def test_create_leaves_out_seconds_and_size_when_not_given(env: Env) -> None:
    video = await env.client.create_video(
        prompt="a paper boat", model="sora-2", seconds=None, size=None, idempotency_key=None
    )

    assert (video["seconds"], video["size"]) == ("4", "720x1280")  # the server's defaults
    [request] = env.recorder.requests
    assert b'name="seconds"' not in request.content and b'name="size"' not in request.content
    assert request.headers["idempotency-key"]  # one of our own, so retries of this call stay one video


@pytest.mark.anyio
async def test_retrieve_remix_download_and_delete_a_video(env: Env) -> None:
    video = await completed_video(env)
    assert video["status"] == "completed" and video["progress"] == 100

    remix = await env.client.remix_video(video["id"], "the same fox, at night")
    assert remix["remixed_from_video_id"] == video["id"] and remix["prompt"] == "the same fox, at night"
    remix_request = env.recorder.requests[-1]
    assert remix_request.headers["content-type"] == "application/json"

    for variant in ("video", "thumbnail", "spritesheet"):
        data, media_type, _ = CONTENT[variant]
        async with env.client.download_content(video["id"], variant) as response:
            assert response.headers["content-type"] == media_type
            received = b"".join([chunk async for chunk in response.aiter_bytes()])
        assert received == data
    assert env.recorder.requests[-1].url.params["variant"] == "spritesheet"
    assert env.recorder.requests[-1].headers["accept"] == "application/binary"

    deleted = await env.client.delete_video(video["id"])
    assert deleted == {"id": video["id"], "object": "video.deleted", "deleted": True}
    with pytest.raises(PermanentOpenAIError) as caught:
        await env.client.retrieve_video(video["id"])
    assert (caught.value.status, caught.value.code) == (404, "not_found")


@pytest.mark.anyio
async def test_list_pages_through_every_video_with_after(env: Env) -> None:
    created = []
    for n in range(5):
        video = await env.client.create_video(
            prompt=f"clip {n}", model="sora-2", seconds=None, size=None, idempotency_key=None
        )
        created.append(video["id"])
        env.clock.advance(1)

    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = await env.client.list_videos(after=after, limit=2, order="asc")
        pages += 1
        assert page["object"] == "list"
        seen.extend(v["id"] for v in page["data"])
        if not page["has_more"]:
            break
        after = page["last_id"]

    assert seen == created and pages == 3
    newest_first = await env.client.list_videos()
    assert [v["id"] for v in newest_first["data"]] == created[::-1]
    assert env.recorder.requests[-1].url.params["limit"] == "100"


@pytest.mark.anyio
async def test_retrieve_by_kind_uses_each_resources_path(env: Env) -> None:
    video = await env.client.create_video(
        prompt="a kite", model="sora-2", seconds=None, size=None, idempotency_key=None
    )
    assert (await env.client.retrieve("video", video["id"]))["id"] == video["id"]

    for kind, resource_id, path in (
        ("batch", "batch_1", "/v1/batches/batch_1"),
        ("response", "resp_1", "/v1/responses/resp_1"),
        ("fine_tuning_job", "ftjob_1", "/v1/fine_tuning/jobs/ftjob_1"),
    ):
        # The emulator serves videos only: its plain-text 404 still becomes a typed error.
        with pytest.raises(PermanentOpenAIError) as caught:
            await env.client.retrieve(kind, resource_id)
        assert caught.value.status == 404 and caught.value.message == "Not Found"
        assert env.recorder.requests[-1].url.path == path
    with pytest.raises(ValueError, match="unknown resource kind"):
        await env.client.retrieve("eval", "eval_1")


@pytest.mark.anyio
async def test_ids_are_escaped_into_a_single_path_segment(env: Env) -> None:
    with pytest.raises(PermanentOpenAIError):
        await env.client.retrieve_video("../batches/x?y=1")
    assert env.recorder.requests[-1].url.raw_path == b"/v1/videos/..%2Fbatches%2Fx%3Fy%3D1"

    sent = len(env.recorder.requests)
    for bad in ("", ".", ".."):
        with pytest.raises(PermanentOpenAIError) as caught:
            await env.client.delete_video(bad)
        assert caught.value.code == "invalid_value"
    assert len(env.recorder.requests) == sent


@pytest.mark.anyio
@pytest.mark.parametrize("base_url", ["http://emulator/_emulator/v1", "http://emulator/_emulator/v1/"])
async def test_a_base_url_with_a_path_keeps_it(base_url: str) -> None:
    emulator = Emulator(EmulatorConfig(duration=DURATION), clock=ManualClock())
    parent = Starlette(routes=[Mount("/_emulator", app=emulator.app)])
    client = make_client(base_url, httpx.ASGITransport(app=parent), api_key=None)
    try:
        video = await client.create_video(
            prompt="a mounted emulator", model="sora-2", seconds=None, size=None, idempotency_key=None
        )
        assert (await client.retrieve_video(video["id"]))["id"] == video["id"]
        assert emulator.calls == [("POST", "/v1/videos"), ("GET", f"/v1/videos/{video['id']}")]
    finally:
        await client.aclose()
        await emulator.aclose()


# --- retries and backoff ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_two_server_errors_then_success_make_one_video_with_one_idempotency_key(env: Env) -> None:
    env.emulator.inject_fault(500, count=2)

    video = await env.client.create_video(
        prompt="a slow server", model="sora-2", seconds="4", size=None, idempotency_key="job-42"
    )

    assert env.create_calls() == 3
    assert list(env.emulator.videos) == [video["id"]]
    assert [r.headers["idempotency-key"] for r in env.recorder.requests] == ["job-42"] * 3
    assert len(env.sleeps.calls) == 2
    for attempt, delay in enumerate(env.sleeps.calls):  # full jitter below min(cap, base * 2^n)
        assert 0.0 <= delay <= min(8.0, 0.5 * 2**attempt)
    assert env.sample("create_video", "500") == 2
    assert env.sample("create_video", "200") == 1
    duration_count = env.metrics.registry.get_sample_value(
        "sorahook_openai_request_duration_seconds_count", {"operation": "create_video"}
    )
    assert duration_count == 3


@pytest.mark.anyio
async def test_retries_and_failed_attempts_are_counted_by_operation_and_category(env: Env) -> None:
    env.emulator.inject_fault(500, count=2)
    env.emulator.inject_fault(429, count=1, code="rate_limit_exceeded")
    await env.client.create_video(prompt="a", model="sora-2", seconds="4", size=None, idempotency_key=None)
    env.emulator.inject_fault(429, code="insufficient_quota")
    with pytest.raises(PermanentOpenAIError):
        await env.client.retrieve_video("video_missing")

    def sample(name: str, **labels: str) -> float:
        return env.metrics.registry.get_sample_value(name, labels) or 0.0

    assert sample("sorahook_openai_retries_total", operation="create_video") == 3
    assert sample("sorahook_openai_retries_total", operation="retrieve_video") == 0
    errors = "sorahook_openai_errors_total"
    assert sample(errors, operation="create_video", category="provider_error") == 2
    assert sample(errors, operation="create_video", category="rate_limited") == 1
    assert sample(errors, operation="retrieve_video", category="quota_or_billing") == 1


@pytest.mark.anyio
async def test_max_retries_zero_sends_once(env: Env) -> None:
    client = make_client("http://emulator/v1", env.recorder, sleeps=env.sleeps, max_retries=0)
    env.emulator.inject_fault(503)
    with pytest.raises(TransientOpenAIError):
        await client.create_video(prompt="a", model="sora-2", seconds="4", size=None, idempotency_key=None)
    await client.aclose()
    assert env.create_calls() == 1 and env.sleeps.calls == []


@pytest.mark.anyio
async def test_a_generated_idempotency_key_is_reused_on_retries(env: Env) -> None:
    env.emulator.inject_fault(503)

    await env.client.create_video(
        prompt="no key given", model="sora-2", seconds=None, size=None, idempotency_key=None
    )

    keys = {r.headers["idempotency-key"] for r in env.recorder.requests}
    assert len(env.recorder.requests) == 2 and len(keys) == 1 and len(env.emulator.videos) == 1


@pytest.mark.anyio
async def test_rate_limit_waits_as_long_as_retry_after_says(env: Env) -> None:
    env.emulator.inject_fault(429, retry_after=2)

    await env.client.create_video(
        prompt="a busy day", model="sora-2", seconds=None, size=None, idempotency_key="k"
    )

    assert env.sleeps.calls == [2.0]
    assert env.create_calls() == 2 and len(env.emulator.videos) == 1
    assert env.sample("create_video", "429") == 1


@pytest.mark.anyio
async def test_retry_after_ms_is_preferred_to_retry_after() -> None:
    sleeps = Sleeps()
    script = Scripted(
        [
            Response("{}", 429, headers={"retry-after-ms": "1500", "retry-after": "7"}),
            Response('{"id":"video_1"}', 200, media_type="application/json"),
        ]
    )
    client, _ = scripted_client(script, sleeps)
    try:
        assert await client.retrieve_video("video_1") == {"id": "video_1"}
    finally:
        await client.aclose()
    assert sleeps.calls == [1.5]


@pytest.mark.anyio
async def test_retry_after_as_an_http_date_is_honoured() -> None:
    sleeps = Sleeps()
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    script = Scripted([Response("", 503, headers={"retry-after": when}), Response("{}", 200)])
    client, _ = scripted_client(script, sleeps)
    try:
        await client.retrieve_video("video_1")
    finally:
        await client.aclose()
    [delay] = sleeps.calls
    assert 27.0 <= delay <= 30.0


@pytest.mark.anyio
async def test_a_retry_after_beyond_the_cap_fails_at_once_keeping_the_wait(env: Env) -> None:
    env.emulator.inject_fault(429, retry_after=600)

    with pytest.raises(TransientOpenAIError) as caught:
        await env.client.retrieve_video("video_x")

    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (
        429,
        "rate_limit_exceeded",
        600.0,
    )
    assert env.sleeps.calls == [] and len(env.emulator.calls) == 1


@pytest.mark.anyio
async def test_exhausted_retries_raise_a_transient_error_with_openais_code(env: Env) -> None:
    env.emulator.inject_fault(503, count=10)

    with pytest.raises(TransientOpenAIError) as caught:
        await env.client.create_video(
            prompt="never", model="sora-2", seconds=None, size=None, idempotency_key="k"
        )

    error = caught.value
    assert (error.status, error.code, error.type) == (503, "server_error", "server_error")
    assert error.message == "The engine is currently overloaded, please try again later."
    assert env.create_calls() == 4 and len(env.sleeps.calls) == 3  # max_retries=3
    assert env.emulator.videos == {}
    assert env.sample("create_video", "503") == 4


@pytest.mark.anyio
async def test_timeouts_are_retried_then_raised_as_transient() -> None:
    sleeps = Sleeps()
    script = Scripted([Response("{}", 200)], delay=0.5)
    async with serve(script.app) as port:
        client = make_client(f"http://127.0.0.1:{port}/v1", None, sleeps=sleeps, timeout=0.1, max_retries=1)
        try:
            with pytest.raises(TransientOpenAIError) as caught:
                await client.retrieve_video("video_1")
        finally:
            await client.aclose()
    assert caught.value.code == "timeout" and caught.value.status is None
    assert len(script.seen) == 2 and len(sleeps.calls) == 1


@pytest.mark.anyio
async def test_connection_refused_is_transient_after_retries() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    metrics, sleeps = Metrics(), Sleeps()
    client = make_client(f"http://127.0.0.1:{port}/v1", None, metrics=metrics, sleeps=sleeps, max_retries=2)
    try:
        with pytest.raises(TransientOpenAIError) as caught:
            await client.retrieve_video("video_1")
    finally:
        await client.aclose()

    assert caught.value.code == "connection_error" and caught.value.status is None
    assert len(sleeps.calls) == 2
    labels = {"operation": "retrieve_video", "status": "error"}
    assert metrics.registry.get_sample_value("sorahook_openai_requests_total", labels) == 3


# --- permanent errors ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_moderation_blocked_is_permanent_and_keeps_openais_words(env: Env) -> None:
    with pytest.raises(PermanentOpenAIError) as caught:
        await env.client.create_video(
            prompt="[moderation] something", model="sora-2", seconds=None, size=None, idempotency_key="k"
        )

    error = caught.value
    assert (error.status, error.code, error.type, error.param) == (
        400,
        "moderation_blocked",
        "invalid_request_error",
        "prompt",
    )
    assert error.message == "Your request was blocked by our moderation system."
    assert error.as_job_error() == {
        "code": "moderation_blocked",
        "message": error.message,
        "category": "content_policy",
        "user_message": USER_MESSAGES["content_policy"],
    }
    assert env.create_calls() == 1 and env.sleeps.calls == [] and env.emulator.videos == {}
    assert env.sample("create_video", "400") == 1


@pytest.mark.anyio
async def test_an_unknown_video_is_a_permanent_404(env: Env) -> None:
    with pytest.raises(PermanentOpenAIError) as caught:
        await env.client.retrieve_video("video_missing")

    assert (caught.value.status, caught.value.code, caught.value.param) == (404, "not_found", "video_id")
    assert "video_missing" in caught.value.message
    assert len(env.emulator.calls) == 1 and env.sample("retrieve_video", "404") == 1


@pytest.mark.anyio
async def test_insufficient_quota_is_permanent_despite_its_429(env: Env) -> None:
    env.emulator.inject_fault(429, code="insufficient_quota")

    with pytest.raises(PermanentOpenAIError) as caught:
        await env.client.list_videos()

    assert (caught.value.status, caught.value.code) == (429, "insufficient_quota")
    assert len(env.emulator.calls) == 1 and env.sleeps.calls == []


@pytest.mark.anyio
async def test_a_wrong_api_key_is_permanent(env: Env) -> None:
    client = make_client("http://emulator/v1", env.recorder, api_key="sk-wrong")
    try:
        with pytest.raises(PermanentOpenAIError) as caught:
            await client.list_videos()
    finally:
        await client.aclose()
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")


@pytest.mark.anyio
async def test_conflict_is_permanent_and_not_retried() -> None:
    sleeps = Sleeps()
    envelope = '{"error":{"message":"busy","type":"invalid_request_error","param":null,"code":"conflict"}}'
    script = Scripted([Response(envelope, 409, media_type="application/json")])
    client, seen = scripted_client(script, sleeps)
    try:
        with pytest.raises(PermanentOpenAIError) as caught:
            await client.delete_video("video_1")
    finally:
        await client.aclose()
    assert (caught.value.status, caught.value.code, caught.value.message) == (409, "conflict", "busy")
    assert seen() == [("DELETE", "/v1/videos/video_1")] and sleeps.calls == []


@pytest.mark.anyio
async def test_non_json_error_bodies_become_short_messages() -> None:
    sleeps = Sleeps()
    page = "<html><body>  502 Bad   Gateway " + "x" * 5000 + "</body></html>"
    script = Scripted([Response(page, 502, media_type="text/html")])
    client, seen = scripted_client(script, sleeps, max_retries=1)
    try:
        with pytest.raises(TransientOpenAIError) as caught:
            await client.retrieve_video("video_1")
        assert caught.value.message.startswith("<html><body> 502 Bad Gateway xxx")
        assert len(caught.value.message) <= 300 and caught.value.code is None
        assert len(seen()) == 2

        script.answers[:] = [Response("", 400)]
        with pytest.raises(PermanentOpenAIError) as empty:
            await client.retrieve_video("video_1")
        assert empty.value.message == "HTTP 400 Bad Request"

        script.answers[:] = [Response("<h1>hello</h1>", 200, media_type="text/html")]
        with pytest.raises(TransientOpenAIError) as not_json:
            await client.retrieve_video("video_1")
        assert not_json.value.code == "invalid_response" and "<h1>hello</h1>" in not_json.value.message
    finally:
        await client.aclose()


# --- downloads ----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_download_retries_before_the_body_and_types_its_errors(env: Env) -> None:
    video = await completed_video(env)
    env.emulator.inject_fault(500)

    async with env.client.download_content(video["id"], "thumbnail") as response:
        assert await response.aread() == CONTENT["thumbnail"][0]
    assert env.emulator.calls[-2:] == [("GET", f"/v1/videos/{video['id']}/content")] * 2
    assert env.sample("download_content", "500") == 1 and env.sample("download_content", "200") == 1

    pending = await env.client.create_video(
        prompt="not yet", model="sora-2", seconds=None, size=None, idempotency_key=None
    )
    with pytest.raises(PermanentOpenAIError) as not_ready:
        async with env.client.download_content(pending["id"]):
            pytest.fail("the body of an error must not be handed out")
    assert (not_ready.value.status, not_ready.value.code) == (400, "video_not_ready")

    env.clock.advance(4 * 3600)
    with pytest.raises(PermanentOpenAIError) as expired:
        async with env.client.download_content(video["id"]):
            pass
    assert (expired.value.status, expired.value.code) == (410, "video_expired")


@pytest.mark.anyio
async def test_over_a_real_server_retries_and_streams_the_video() -> None:
    clock = ManualClock()
    emulator = Emulator(EmulatorConfig(duration=DURATION, api_key=API_KEY), clock=clock)
    emulator.inject_fault(502)
    sleeps = Sleeps()
    async with serve(emulator.app) as port:
        client = make_client(f"http://127.0.0.1:{port}/v1", None, sleeps=sleeps)
        try:
            video = await client.create_video(
                prompt="over loopback", model="sora-2", seconds="12", size="720x1280", idempotency_key="k"
            )
            clock.advance(DURATION + 1)
            chunks: list[bytes] = []
            async with client.download_content(video["id"]) as response:
                assert response.headers["content-type"] == "video/mp4"
                chunks.extend([chunk async for chunk in response.aiter_bytes(chunk_size=1024)])
        finally:
            await client.aclose()
            await emulator.aclose()

    assert b"".join(chunks) == CONTENT["video"][0] and len(chunks) > 1
    assert emulator.calls.count(("POST", "/v1/videos")) == 2 and len(emulator.videos) == 1
    assert len(sleeps.calls) == 1


@pytest.mark.anyio
async def test_a_download_cut_off_mid_body_raises_a_transient_error() -> None:
    async def half_an_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: video/mp4\r\ncontent-length: 100000\r\n\r\n" + b"x" * 10
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half_an_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sleeps = Sleeps()
    client = make_client(f"http://127.0.0.1:{port}/v1", None, sleeps=sleeps)
    try:
        with pytest.raises(TransientOpenAIError) as caught:
            async with client.download_content("video_1") as response:
                async for _ in response.aiter_bytes():
                    pass
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert caught.value.code == "network_error" and sleeps.calls == []  # bytes were seen: no retry here
