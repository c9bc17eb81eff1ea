"""A load generator for POST /webhooks/openai: signed raw HTTP/1.1 over keep-alive connections.

Run as its own process (`python -m bench.loadgen ...`, normally started by `bench.receiver`), pinned to
a core of its own. It writes pre-built request bytes to asyncio protocols and parses only the status
line, `content-length` and the body: a few microseconds of client CPU per request, where a general
client (aiohttp, httpx) spends tens, enough to make the generator rather than the server the limit.

Two modes, one JSON line of results on stdout:
- closed loop: N connections each send the next request as soon as the previous answer arrives, for a
  warm-up and then a measured window: the server's maximum throughput and its latency under it;
- open loop: requests start on a fixed timeline (`rate` per second) whatever the server does, and
  latency is measured from each request's *scheduled* start, so a stall is not hidden by the generator
  waiting for it (coordinated omission).

Its parts are the benches' one way to drive signed webhooks: `webhook_request` (signed by
`service.signing.Signer`, the service's own signer), `Pool` (the keep-alive connections) and `pace`
(the open-loop timeline). `bench.soak` builds its mixed traffic from the same three.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal, cast

from service.signing import Signer

Mode = Literal["closed", "open"]

SECRET_ENV = "BENCH_WEBHOOK_SECRET"
PATH = "/webhooks/openai"


# --- requests, built and signed before the clock starts ------------------------------------------------


def webhook_request(host: str, msg_id: str, timestamp: int, body: str, signature: str) -> bytes:
    """One POST of a webhook as raw HTTP/1.1 bytes; `host` is the Host header (`127.0.0.1:8000`)."""
    return (
        f"POST {PATH} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body.encode())}\r\nwebhook-id: {msg_id}\r\n"
        f"webhook-timestamp: {timestamp}\r\nwebhook-signature: {signature}\r\n\r\n{body}"
    ).encode()


def build_requests(host: str, port: int, secret: str, count: int) -> list[bytes]:
    """`count` distinct signed `video.completed` webhooks: each a new webhook-id and a new video.

    Signed with the service's own `Signer` (held equal to standardwebhooks' `sign` by
    tests/test_signing.py); signing happens here, before the clock starts, so it costs the run nothing.
    """
    signer = Signer()
    timestamp = int(time.time())
    run = secrets.token_hex(4)
    out: list[bytes] = []
    for i in range(count):
        msg_id = f"msg_{run}{i:07d}"
        body = (
            f'{{"id":"evt_{run}{i:07d}","object":"event","created_at":{timestamp},'
            f'"type":"video.completed","data":{{"id":"video_{run}{i:07d}"}}}}'
        )
        signature = signer.sign(msg_id, timestamp, body, secret)
        out.append(webhook_request(f"{host}:{port}", msg_id, timestamp, body, signature))
    return out


# --- keep-alive connections, and the open-loop timeline ------------------------------------------------


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.idle_since = 0.0  # time.monotonic() when its last answer arrived

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but quacks

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        buf = self._buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else None])
        elif b"\r\ntransfer-encoding:" in head:
            self._fail(ConnectionError("chunked responses are not supported"))
            return
        total = end + 4 + length
        if len(buf) < total:
            return
        status = int(head[9:12])
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(exc or ConnectionError("the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        waiter = self._waiter = self._loop.create_future()
        if self._transport is None:
            waiter.set_exception(ConnectionError("not connected"))
        else:
            self._transport.write(request)
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def connect(host: str, port: int, n: int) -> list[Connection]:
    loop = asyncio.get_running_loop()
    made = await asyncio.gather(
        *(loop.create_connection(lambda: Connection(loop), host, port) for _ in range(n))
    )
    return [protocol for _, protocol in made]


class Pool:
    """Keep-alive connections to one server, at most `limit` busy at once.

    A request beyond the limit waits its turn, in order, so an open loop's latency (counted from the
    schedule) includes that wait. The most recently used idle connection goes first; one idle longer
    than `max_idle` is closed rather than reused, before the server's keep-alive timeout (uvicorn's is
    5 s) could close it under a request.
    """

    def __init__(self, host: str, port: int, limit: int, max_idle: float = 2.0) -> None:
        self.host, self.port, self.limit, self.max_idle = host, port, limit, max_idle
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[Connection] = []

    async def fill(self, n: int) -> None:
        """Open `n` connections now (before a clock starts), idle and ready."""
        made = await connect(self.host, self.port, n)
        now = time.monotonic()
        for conn in made:
            conn.idle_since = now
        self._idle.extend(made)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send one request and return (status, body); ConnectionError or OSError if it got no answer."""
        async with self._slots:
            conn = self._take() or await self._connect()
            try:
                answer = await conn.send(data)
            except BaseException:
                conn.close()
                raise
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            return answer

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _connect(self) -> Connection:
        [conn] = await connect(self.host, self.port, 1)
        return conn

    def _take(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.is_open and now - conn.idle_since < self.max_idle:
                return conn
            conn.close()
        return None


async def pace(
    rate: float, count: int, fire: Callable[[int, int], None], *, start_ns: int, spin: float = 0.002
) -> None:
    """Open loop: `fire(i, scheduled)` for each i < count at scheduled = start_ns + i / rate
    (`time.perf_counter_ns()`), whatever the server does meanwhile; `fire` must not block.

    The loop's timers have millisecond resolution: it sleeps to within `spin` seconds of the next start,
    then spins (still serving responses) so requests start on time, not up to a tick late. `spin=0`
    only sleeps, for rates where a millisecond late does not matter and the spinning's CPU would.
    """
    interval = 1e9 / rate
    spin_ns = int(spin * 1e9)
    margin = spin_ns + 1_000_000 if spin_ns else 0
    i = 0
    while i < count:
        now = time.perf_counter_ns()
        while i < count and start_ns + int(i * interval) <= now:
            fire(i, start_ns + int(i * interval))
            i += 1
        if i < count:
            wait = start_ns + int(i * interval) - time.perf_counter_ns()
            await asyncio.sleep((wait - spin_ns) / 1e9 if wait > margin else 0)


# --- measuring ------------------------------------------------------------------------------------------


@dataclass
class Result:
    mode: Mode
    connections: int
    window_s: float
    sent: int = 0
    answered: int = 0
    expected: int = 0  # answers with the expected status and body
    errors: int = 0  # connection failures (no answer)
    statuses: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)  # the first few, as "status body"
    in_window: int = 0
    throughput: float = 0.0
    offered_rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    send_lag_p99_ms: float = 0.0  # open loop: how late the generator itself fired requests
    gen_cpu: float = 0.0  # this process's CPU over the window, 1.0 = one core
    server_cpu: float | None = None  # the server process's (all threads), if its pid was given
    other_cpu: float | None = None  # every other process on the machine: noise in the figures
    exhausted: bool = False  # ran out of pre-built requests: the throughput is a floor, not a figure


class Tally:
    def __init__(self, expect_status: int, expect_body: bytes | None) -> None:
        self.expect_status, self.expect_body = expect_status, expect_body
        self.statuses: Counter[int] = Counter()
        self.expected = 0
        self.errors = 0
        self.unexpected: list[str] = []

    def add(self, status: int, body: bytes) -> None:
        self.statuses[status] += 1
        if status == self.expect_status and (self.expect_body is None or body == self.expect_body):
            self.expected += 1
        elif len(self.unexpected) < 5:
            self.unexpected.append(f"{status} {body[:200].decode('utf-8', 'replace')}")

    def fill(self, result: Result) -> None:
        result.answered = sum(self.statuses.values())
        result.expected, result.errors = self.expected, self.errors
        result.statuses = {str(code): n for code, n in sorted(self.statuses.items())}
        result.unexpected = self.unexpected


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, all its threads (Linux /proc); None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of this process, of the server process and of the whole machine, at the window's edges."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._start: tuple[float, float | None, float | None] = (0.0, None, None)

    def _server_seconds(self) -> float | None:
        return None if self.server_pid is None else process_cpu_seconds(self.server_pid)

    def _machine_seconds(self) -> float | None:
        try:
            with open("/proc/stat") as handle:
                ticks = [int(n) for n in handle.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        return (sum(ticks) - ticks[3] - ticks[4]) / self._ticks  # all but idle and iowait

    def start(self) -> None:
        self._start = (time.process_time(), self._server_seconds(), self._machine_seconds())

    def stop(self, result: Result) -> None:
        own, server, machine = time.process_time(), self._server_seconds(), self._machine_seconds()
        window = result.window_s
        result.gen_cpu = (own - self._start[0]) / window
        if server is not None and self._start[1] is not None:
            result.server_cpu = (server - self._start[1]) / window
        if machine is not None and self._start[2] is not None:
            busy = (machine - self._start[2]) / window
            result.other_cpu = max(0.0, busy - result.gen_cpu - (result.server_cpu or 0.0))


async def closed_loop(
    conns: list[Connection],
    requests: list[bytes],
    tally: Tally,
    warmup: float,
    duration: float,
    meter: CpuMeter,
) -> Result:
    """Each connection sends the next request as soon as the previous answer arrives (no pool between:
    each request costs the generator as little as it can)."""
    result = Result("closed", len(conns), duration)
    latencies: list[int] = []
    next_index = 0
    start = time.perf_counter_ns()
    window_start = start + int(warmup * 1e9)
    window_end = window_start + int(duration * 1e9)

    async def client(conn: Connection) -> None:
        nonlocal next_index
        while True:
            sent = time.perf_counter_ns()
            if sent >= window_end:
                return
            if next_index >= len(requests):
                result.exhausted = True
                return
            request = requests[next_index]
            next_index += 1
            try:
                status, body = await conn.send(request)
            except (ConnectionError, OSError):
                tally.errors += 1
                return
            done = time.perf_counter_ns()
            tally.add(status, body)
            if window_start <= done <= window_end:
                result.in_window += 1
                if sent >= window_start:
                    latencies.append(done - sent)

    async def meter_window() -> None:
        await asyncio.sleep(warmup)
        meter.start()
        await asyncio.sleep(max(0.0, (window_end - time.perf_counter_ns()) / 1e9))
        meter.stop(result)

    await asyncio.gather(meter_window(), *(client(conn) for conn in conns))
    result.sent = next_index
    result.throughput = result.in_window / duration
    latencies.sort()
    result.p50_ms, result.p99_ms = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    result.max_ms = latencies[-1] / 1e6 if latencies else 0.0
    tally.fill(result)
    return result


async def open_loop(
    pool: Pool,
    requests: list[bytes],
    tally: Tally,
    rate: float,
    warmup: float,
    duration: float,
    meter: CpuMeter,
) -> Result:
    """Requests start at `rate` per second on `pace`'s timeline, over at most `pool.limit` connections."""
    result = Result("open", pool.limit, duration, offered_rate=rate)
    n = min(len(requests), int(rate * (warmup + duration)))
    result.exhausted = n < int(rate * (warmup + duration))
    start = time.perf_counter_ns() + 10_000_000
    window_start = start + int(warmup * 1e9)
    window_end = window_start + int(duration * 1e9)
    latencies: list[int] = []
    lags: list[int] = []
    tasks: set[asyncio.Task[None]] = set()
    metered = False

    async def one(i: int, scheduled: int) -> None:
        try:
            status, body = await pool.request(requests[i])
        except (ConnectionError, OSError):
            tally.errors += 1  # that connection is gone; the pool opens another for the next request
            return
        done = time.perf_counter_ns()
        tally.add(status, body)
        if window_start <= scheduled < window_end:
            latencies.append(done - scheduled)
            if done <= window_end:
                result.in_window += 1

    def fire(i: int, scheduled: int) -> None:
        nonlocal metered
        now = time.perf_counter_ns()
        if not metered and now >= window_start:
            meter.start()
            metered = True
        if window_start <= scheduled < window_end:
            lags.append(now - scheduled)
        task = asyncio.create_task(one(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await pace(rate, n, fire, start_ns=start)
    result.sent = n
    if not metered:
        meter.start()
    await asyncio.sleep(max(0.0, (window_end - time.perf_counter_ns()) / 1e9))
    meter.stop(result)
    if tasks:  # what is still unanswered after 10 s more stays unanswered
        _, late = await asyncio.wait(set(tasks), timeout=10)
        for task in late:
            task.cancel()
    result.throughput = result.in_window / duration
    latencies.sort()
    lags.sort()
    result.p50_ms, result.p99_ms = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    result.max_ms = latencies[-1] / 1e6 if latencies else 0.0
    result.send_lag_p99_ms = _percentile(lags, 0.99)
    tally.fill(result)
    return result


@dataclass(frozen=True)
class Plan:
    host: str
    port: int
    mode: Mode
    connections: int
    duration: float
    warmup: float
    rate: float
    capacity: int
    expect_status: int
    expect_body: bytes | None
    server_pid: int | None


async def run_plan(plan: Plan, secret: str) -> Result:
    tally = Tally(plan.expect_status, plan.expect_body)
    meter = CpuMeter(plan.server_pid)
    if plan.mode == "closed":
        requests = build_requests(plan.host, plan.port, secret, plan.capacity)
        conns = await connect(plan.host, plan.port, plan.connections)
        try:
            return await closed_loop(conns, requests, tally, plan.warmup, plan.duration, meter)
        finally:
            for conn in conns:
                conn.close()
    count = int(plan.rate * (plan.warmup + plan.duration)) + 1
    requests = build_requests(plan.host, plan.port, secret, count)
    pool = Pool(plan.host, plan.port, plan.connections)
    await pool.fill(plan.connections)
    try:
        return await open_loop(pool, requests, tally, plan.rate, plan.warmup, plan.duration, meter)
    finally:
        pool.close()


def pin_to_cpu(cpu: int | None) -> None:
    """Keep this process on one core (Linux), so the server and the generator do not share one."""
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["closed", "open"], default="closed")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window opens")
    parser.add_argument("--rate", type=float, default=1000.0, help="open loop: requests per second")
    parser.add_argument(
        "--capacity", type=int, default=150_000, help="closed loop: requests built beforehand"
    )
    parser.add_argument("--expect-status", type=int, default=200)
    parser.add_argument("--expect-body", default=None, help="the exact body every answer must have")
    parser.add_argument("--server-pid", type=int, default=None, help="measure this process's CPU too")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        print(f"loadgen: set {SECRET_ENV} to the server's whsec_ secret", file=sys.stderr)
        return 2
    pin_to_cpu(args.cpu)
    plan = Plan(
        host=args.host,
        port=args.port,
        mode=args.mode,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        rate=args.rate,
        capacity=args.capacity,
        expect_status=args.expect_status,
        expect_body=args.expect_body.encode() if args.expect_body is not None else None,
        server_pid=args.server_pid,
    )
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run_plan(plan, secret))
    else:
        result = uvloop.run(run_plan(plan, secret))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
