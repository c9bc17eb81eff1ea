"""The HTTP server's limits on clients: header and body timeouts, head size, connection cap (service/server.py).

The first group runs uvicorn with sorahook's protocol inside the test's loop against a tiny app and raw
sockets, with limits of a fraction of a second; the last test takes thousands of slow connections to a real
`sorahook serve` process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.config import new_webhook_secret
from service.metrics import Metrics
from service.server import Refusals, ServerLimits, limited_protocol, refusal_counter
from tests.support import ROOT, auth, make_settings, signed_webhook

pytestmark = pytest.mark.anyio

FAST = ServerLimits(max_connections=50, header_timeout=0.3, body_timeout=0.3, max_header_bytes=4096)


def _app() -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def echo(request: Request) -> Response:
        if request.query_params.get("wait"):  # an app slower than its client: not the client's fault
            await asyncio.sleep(float(request.query_params["wait"]))
        return JSONResponse({"received": len(await request.body())})

    async def gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=400)  # nobody is there to read it

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/echo", echo, methods=["POST"])],
        exception_handlers={ClientDisconnect: gone},
    )


@asynccontextmanager
async def _server(
    limits: ServerLimits = FAST, app: Starlette | None = None
) -> AsyncIterator[tuple[int, Metrics]]:
    metrics = Metrics()
    protocol = limited_protocol(limits, Refusals(refusal_counter(metrics.connections_refused)))
    config = uvicorn.Config(app or _app(), host="127.0.0.1", port=0, http=protocol, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "server did not start"
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1], metrics
    finally:
        server.should_exit = True
        await task


def _refused(metrics: Metrics, reason: str) -> float:
    return float(metrics.connections_refused.labels(reason=reason)._value.get())


async def _read_until_closed(reader: asyncio.StreamReader, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as a close)."""
    out = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                out += chunk
    except ConnectionError:
        pass
    return out


def _status(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


async def test_a_head_that_never_completes_is_closed_after_the_header_timeout() -> None:
    async with _server() as (port, metrics):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for i in range(20):  # trickling header lines does not extend the deadline
            if reader.at_eof():
                break
            writer.write(f"x-pad-{i}: y\r\n".encode())
            await asyncio.sleep(0.05)
        assert await _read_until_closed(reader) == b""
        assert _refused(metrics, "header_timeout") == 1


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    async with _server() as (port, metrics):
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        assert await _read_until_closed(reader) == b""
        assert _refused(metrics, "header_timeout") == 1


async def test_each_request_on_a_kept_alive_connection_gets_its_own_header_deadline() -> None:
    async with _server() as (port, metrics):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(6):  # together longer than one header timeout, each well within it
                assert (await client.get("/healthz")).status_code == 200
                await asyncio.sleep(0.1)
        assert _refused(metrics, "header_timeout") == 0


async def test_a_stalled_body_gets_408_after_the_body_timeout() -> None:
    async with _server() as (port, metrics):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length: 1000\r\n\r\n" + b"a" * 400)
        answer = await _read_until_closed(reader)
        assert _status(answer) == 408
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert _refused(metrics, "body_timeout") == 1


async def test_a_stalled_api_body_is_a_408_and_no_error_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from service.app import create_app

    app = create_app(make_settings(tmp_path), start_workers=False)
    async with _server(app=app) as (port, metrics):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nauthorization: Bearer test-admin-token\r\n"
            b'content-type: application/json\r\ncontent-length: 100\r\n\r\n{"prompt": "a fox'
        )
        assert _status(await _read_until_closed(reader)) == 408
        await asyncio.sleep(0.1)  # the app has seen the disconnect and finished
        assert _refused(metrics, "body_timeout") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_slow_but_steady_body_is_not_cut_off() -> None:
    async with _server() as (port, metrics):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length: 10\r\nconnection: close\r\n\r\n")
        for _ in range(10):  # one byte every 0.1 s: a second in all, never 0.3 s without a byte
            writer.write(b"a")
            await asyncio.sleep(0.1)
        answer = await _read_until_closed(reader)
        assert _status(answer) == 200 and answer.endswith(b'{"received":10}')
        assert _refused(metrics, "body_timeout") == 0


async def test_an_app_slower_than_its_client_is_not_a_stalled_body() -> None:
    # Reading pauses once 64 KiB wait unread: the client then cannot send, and the wait is the app's.
    body = b"a" * 300_000
    async with _server() as (port, metrics):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.post("/echo", params={"wait": "1.0"}, content=body)
        assert response.status_code == 200 and response.json() == {"received": len(body)}
        assert _refused(metrics, "body_timeout") == 0


async def test_a_head_over_the_limit_gets_431_and_one_at_the_limit_is_served() -> None:
    async with _server() as (port, metrics):
        start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-pad: "
        end = b"\r\nconnection: close\r\n\r\n"
        fits = start + b"a" * (FAST.max_header_bytes - len(start) - len(end)) + end
        assert len(fits) == FAST.max_header_bytes
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(fits)
        assert _status(await _read_until_closed(reader)) == 200

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(start + b"a" * 1_000_000)  # a megabyte of one header: never read whole
        answer = await _read_until_closed(reader)
        assert _status(answer) in (431, None)  # 431, or a reset if the kernel drops it for unread bytes
        assert _refused(metrics, "header_too_large") == 1

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(start + b"a" * (FAST.max_header_bytes - len(start)))  # exactly full, not complete
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"a")
        answer = await _read_until_closed(reader)
        assert _status(answer) == 431
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "header_too_large"
        assert _refused(metrics, "header_too_large") == 2


async def test_connections_beyond_the_cap_are_answered_503_at_once() -> None:
    limits = ServerLimits(max_connections=3, header_timeout=30, body_timeout=30, max_header_bytes=4096)
    async with _server(limits) as (port, metrics):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.05)  # let the server accept them
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        answer = await _read_until_closed(reader)
        assert _status(answer) == 503 and b"too_many_connections" in answer
        assert _refused(metrics, "too_many_connections") == 1
        _, writer = held.pop()
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200  # a freed slot is usable again
        for _, w in held:
            w.close()


async def test_refusals_log_one_line_at_once_then_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="sorahook.server")
    counted: list[str] = []
    bursts: list[None] = []
    refusals = Refusals(counted.append, log_every=0.1, after_burst=lambda: bursts.append(None))
    for i in range(5):
        refusals.record("header_timeout", ("127.0.0.1", 1000 + i), "too slow")
    refusals.record("body_timeout", None, "stalled")
    await asyncio.sleep(0.35)
    lines = [r.getMessage() for r in caplog.records if r.name == "sorahook.server"]
    assert counted == ["header_timeout"] * 5 + ["body_timeout"]
    assert lines == [
        "closed a connection: too slow",
        "closed a connection: stalled",
        "closed 4 more connections (header_timeout) in the last 0.1 s",
    ]
    assert len(bursts) >= 2  # the memory the refused connections held is given back after each burst


FIT_SCRIPT = """
import json, logging, resource, sys
from service.server import ServerLimits, fit_descriptor_limit
logging.basicConfig(stream=sys.stdout, format="%(message)s")
soft, hard = (int(v) for v in sys.argv[1:3])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
fitted = fit_descriptor_limit(ServerLimits(max_connections=2048))
print(json.dumps([fitted.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))
"""


@pytest.mark.parametrize(
    ("soft", "hard", "cap", "limit"),
    [
        (1024, 8192, 2048, 2048 + 256),  # the usual soft limit is raised to fit the cap
        (1024, 1024, 1024 - 256, 1024),  # a hard limit too low for it lowers the cap instead, and says so
    ],
)
def test_the_open_files_limit_is_raised_to_fit_the_connection_cap(
    soft: int, hard: int, cap: int, limit: int
) -> None:
    _, our_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if our_hard != resource.RLIM_INFINITY and our_hard < hard:
        pytest.skip(f"this machine's hard open-files limit is {our_hard}")
    done = subprocess.run(
        [sys.executable, "-c", FIT_SCRIPT, str(soft), str(hard)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    *lines, result = done.stdout.strip().splitlines()
    assert json.loads(result) == [cap, limit]
    assert bool(lines) == (cap < 2048)
    if lines:
        assert "SORAHOOK_MAX_CONNECTIONS lowered from 2048 to 768" in lines[0] and "ulimit -n" in lines[0]


# --- against a real `sorahook serve` ----------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _refusal_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sorahook_connections_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts


class _Slow:
    """Client-side view of the slow connections: how many are open, and how many closed early."""

    def __init__(self) -> None:
        self.open = 0
        self.closed_by_server = 0
        self.checking = True  # while the checks run, no slow connection may have been closed yet
        self.closed_during_checks = 0

    def closed(self) -> None:
        self.open -= 1
        self.closed_by_server += 1
        if self.checking:
            self.closed_during_checks += 1


async def _trickle_head(port: int, state: _Slow, started: asyncio.Event) -> None:
    """A request line, then one more header line every 0.5 s, never the blank line that ends the head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    state.open += 1
    started.set()
    writer.write(b"POST /webhooks/openai HTTP/1.1\r\nHost: sorahook\r\n")
    i = 0
    try:
        while True:
            try:
                async with asyncio.timeout(0.5):
                    if not await reader.read(4096):
                        break
            except TimeoutError:
                writer.write(f"x-trickle-{i}: {'a' * 32}\r\n".encode())
                i += 1
    except ConnectionError:
        pass
    state.closed()
    writer.close()


async def _stall_body(port: int, state: _Slow, sent: int, started: asyncio.Event) -> None:
    """A webhook whose body declares 1 MiB, sends `sent` bytes of it, trickles a few more, then nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    state.open += 1
    started.set()
    writer.write(
        b"POST /webhooks/openai HTTP/1.1\r\nHost: sorahook\r\ncontent-type: application/json\r\n"
        b"webhook-id: wh_slow\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,x\r\n"
        b"content-length: 1048576\r\n\r\n" + b" " * sent
    )
    try:
        for _ in range(4):  # a byte every 0.5 s while the checks run, then a stall
            try:
                async with asyncio.timeout(0.5):
                    if not await reader.read(4096):
                        break
            except TimeoutError:
                writer.write(b" ")
        while await reader.read(4096):
            pass
    except ConnectionError:
        pass
    state.closed()
    writer.close()


def _room_for(connections: int) -> int:
    """Raise this process's open-files limit so it can hold `connections`; return how many it can."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 512
    if soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return min(connections, soft - 512)


@pytest.mark.slow
async def test_thousands_of_slow_clients_do_not_take_the_service_down(
    tmp_path: Path, service_process: Any
) -> None:
    heads, bodies = 2000, 200
    room = _room_for(heads + bodies)
    if room < heads + bodies:  # a machine with a low descriptor limit: as many as it allows, same shape
        heads, bodies = room * 10 // 11, room // 11
        print(f"open-files limit: {heads} trickling heads and {bodies} stalled bodies")
    secret = new_webhook_secret()
    env = {
        "SORAHOOK_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'sorahook.db'}",
        "SORAHOOK_ADMIN_TOKEN": "test-admin-token",
        "SORAHOOK_LOG_FORMAT": "console",
        "OPENAI_WEBHOOK_SECRET": secret,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # unreachable: only webhooks move jobs
        "SORAHOOK_HEADER_TIMEOUT": "6",
        "SORAHOOK_BODY_TIMEOUT": "6",
        "SORAHOOK_MAX_CONNECTIONS": str(heads + bodies + 500),
    }
    svc = service_process(env)
    svc.start()
    assert svc.proc is not None
    pid = svc.proc.pid
    async with httpx.AsyncClient(base_url=svc.url, timeout=30) as client:
        for i in range(50):  # warm up the paths the checks take, so RSS starts from a settled process
            body, headers = signed_webhook(secret, "video.completed", f"video_warm{i}")
            assert (await client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
        await client.get("/metrics")
    rss_start = _rss_mb(pid)

    state = _Slow()
    tasks: list[asyncio.Task[None]] = []
    for i in range(heads + bodies):
        started = asyncio.Event()
        slow = (
            _stall_body(svc.port, state, 512 * 1024, started)
            if i < bodies
            else _trickle_head(svc.port, state, started)
        )
        tasks.append(asyncio.create_task(slow))
        await started.wait()
    assert state.open == heads + bodies
    await asyncio.sleep(0.5)  # every stalled body has arrived at the server
    rss_loaded = _rss_mb(pid)

    # While they are held: health and real signed webhooks are answered (a generous client timeout).
    async with httpx.AsyncClient(base_url=svc.url, timeout=5) as client:
        started_at = time.monotonic()
        assert (await client.get("/healthz")).status_code == 200
        healthz_took = time.monotonic() - started_at
        for i in range(20):
            body, headers = signed_webhook(secret, "video.completed", f"video_during{i}")
            answer = await client.post("/webhooks/openai", content=body, headers=headers)
            assert answer.status_code == 200 and answer.json() == {"status": "accepted"}
        job = await client.get("/v1/jobs/video_during19", headers=auth())
        assert job.status_code == 200 and job.json()["status"] == "completed"
    state.checking = False
    assert state.closed_during_checks == 0, "the slow connections must still be open while the checks run"

    # After the timeouts, the server has closed every one of them, said so, and given the memory back.
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    assert state.closed_by_server == heads + bodies and state.open == 0
    counts = _refusal_counts(svc.url)
    assert counts["header_timeout"] == heads and counts["body_timeout"] == bodies
    assert counts["too_many_connections"] == 0 and counts["header_too_large"] == 0
    log = svc.log.read_text()
    assert "reason=header_timeout" in log and "reason=body_timeout" in log
    for _ in range(60):  # freed memory goes back to the system as the allocator trims: give it a moment
        if _rss_mb(pid) <= rss_start + 25:
            break
        await asyncio.sleep(0.5)
    rss_end = _rss_mb(pid)
    print(
        f"{heads} trickling heads, {bodies} bodies (512 KiB, a trickle, a stall): /healthz answered in {healthz_took:.3f} s;"
        f" RSS {rss_start:.0f} MB before, {rss_loaded:.0f} MB while held, {rss_end:.0f} MB after"
    )
    assert rss_end <= rss_start + 25, (rss_start, rss_loaded, rss_end)
