"""Measure POST throughput of the candidate delivery HTTP clients against a fast local server."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

# A ~1 KiB JSON body, the size of a typical delivery (an event wrapping a job object).
BODY = json.dumps(
    {
        "id": "evt_01J0000000000000000000000",
        "object": "event",
        "type": "video.completed",
        "created_at": 1_760_000_000,
        "data": {
            "id": "job_01J0000000000000000000000",
            "object": "job",
            "kind": "video",
            "status": "completed",
            "prompt": "x" * 700,
        },
    }
).encode()
HEADERS = {"content-type": "application/json", "webhook-id": "evt_01J0000000000000000000000"}

Post = Callable[[], Awaitable[None]]
ClientFactory = Callable[[str, int], AbstractAsyncContextManager[Post]]


# --- the server, run in its own process so it does not share a CPU core with the clients ---


async def _asgi_ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _serve() -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(
        _asgi_ok, http="httptools", loop="auto", lifespan="off", access_log=False, log_level="warning"
    )
    uvicorn.Server(config).run(sockets=[sock])


def _start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.http_clients", "--serve"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    url = f"http://127.0.0.1:{port}/hook"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("bench server did not start")


# --- the clients; each gets a pool as large as the concurrency, so none churns connections ---


@asynccontextmanager
async def _httpx(url: str, concurrency: int) -> Any:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def post() -> None:
            response = await client.post(url, content=BODY, headers=HEADERS)
            response.raise_for_status()

        yield post


@asynccontextmanager
async def _aiohttp(url: str, concurrency: int) -> Any:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def post() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                response.raise_for_status()

        yield post


@asynccontextmanager
async def _httpx_aiohttp(url: str, concurrency: int) -> Any:
    import httpx
    from httpx_aiohttp import HttpxAiohttpClient

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with HttpxAiohttpClient(limits=limits) as client:

        async def post() -> None:
            response = await client.post(url, content=BODY, headers=HEADERS)
            response.raise_for_status()

        yield post


@asynccontextmanager
async def _httpx_sorahook_transport(url: str, concurrency: int) -> Any:
    """httpx over sorahook's own aiohttp transport: the OpenAI client's path (service/http_transport.py)."""
    import httpx

    from service.http_transport import AiohttpTransport

    transport = AiohttpTransport(max_connections=concurrency)
    async with httpx.AsyncClient(transport=transport) as client:

        async def post() -> None:
            response = await client.post(url, content=BODY, headers=HEADERS)
            response.raise_for_status()

        yield post


@asynccontextmanager
async def _sorahook_sender(url: str, concurrency: int) -> Any:
    from service.sender import Sender
    from service.ssrf import StaticResolver

    sender = Sender(resolver=StaticResolver({}), allow_private=True, max_connections=concurrency)
    try:

        async def post() -> None:
            result = await sender.send(url, HEADERS, BODY, timeout=10.0)
            if result.status_code != 200:
                raise RuntimeError(result.error or str(result.status_code))

        yield post
    finally:
        await sender.aclose()


def _clients() -> dict[str, ClientFactory]:
    clients: dict[str, ClientFactory] = {"httpx": _httpx, "aiohttp": _aiohttp}
    try:
        import httpx_aiohttp  # noqa: F401

        clients["httpx-aiohttp"] = _httpx_aiohttp
    except ImportError:
        print("httpx-aiohttp is not installed; skipping it (pip install httpx-aiohttp)", file=sys.stderr)
    clients["httpx+transport"] = _httpx_sorahook_transport  # the OpenAI client
    clients["sorahook Sender"] = _sorahook_sender
    return clients


Sample = tuple[float, float]  # (requests per second, client CPU microseconds per request)


async def _measure(factory: ClientFactory, url: str, concurrency: int, seconds: float) -> Sample:
    """Throughput over `seconds`, after a short warm-up that opens the connections.

    The client's CPU time per request is reported too: on a shared machine it is steadier than
    the rate, and it is what a delivery worker pays for each request.
    """
    async with factory(url, concurrency) as post:
        count = 0
        deadline = 0.0

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await post()
                count += 1

        deadline = time.perf_counter() + 0.3
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        count = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        deadline = start + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        return count / elapsed, cpu / max(count, 1) * 1e6


def _run(
    clients: dict[str, ClientFactory], url: str, concurrencies: list[int], rounds: int, seconds: float
) -> dict[tuple[str, int], Sample]:
    samples: dict[tuple[str, int], list[Sample]] = {(n, c): [] for n in clients for c in concurrencies}
    runner = _runner()
    # Rounds are interleaved so drift in machine load spreads over every client alike.
    for r in range(rounds):
        for name, factory in clients.items():
            for c in concurrencies:
                rate, cpu = runner(_measure(factory, url, c, seconds))
                samples[(name, c)].append((rate, cpu))
                print(
                    f"  round {r + 1}/{rounds} {name:<16} c={c:<3} {rate:>9,.0f} req/s {cpu:>6.0f} us CPU/req",
                    file=sys.stderr,
                )
    return {
        key: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
        for key, values in samples.items()
    }


def _runner() -> Callable[[Coroutine[Any, Any, Sample]], Sample]:
    # The service runs under uvicorn, which uses uvloop when it is installed; measure the same way.
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    run: Callable[[Coroutine[Any, Any, Sample]], Sample] = uvloop.run
    return run


def _table(medians: dict[tuple[str, int], Sample], concurrencies: list[int]) -> str:
    names = list(dict.fromkeys(name for name, _ in medians))
    baseline = names[0]
    head = f"{'client':<17}" + "".join(
        f"{'c=' + str(c) + ' req/s':>13}{'vs ' + baseline:>12}{'CPU us/req':>11}" for c in concurrencies
    )
    lines = [head, "-" * len(head)]
    for name in names:
        row = f"{name:<17}"
        for c in concurrencies:
            rate, cpu = medians[(name, c)]
            row += f"{rate:>13,.0f}{rate / medians[(baseline, c)][0]:>11.1f}x{cpu:>11.0f}"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_clients", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per sample")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--clients", nargs="+", help="a subset, by name; the first is the baseline")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve()
        return
    clients = _clients()
    if args.clients:
        clients = {name: clients[name] for name in args.clients if name in clients}
    proc, url = _start_server()
    try:
        medians = _run(clients, url, args.concurrency, args.rounds, args.seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(
        f"POST {len(BODY)} B JSON to a local uvicorn+httptools server (separate process), {os.cpu_count()} CPUs;"
    )
    print(f"median of {args.rounds} rounds x {args.seconds:g} s; client event loop: {_loop_name()}")
    print(_table(medians, args.concurrency))


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


if __name__ == "__main__":
    main()
