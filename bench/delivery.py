"""Measure delivery: outbox throughput against the raw client ceiling, and webhook-to-subscriber latency.

Two measurements, one run (`python -m bench.delivery`):

- Outbox throughput. A fresh SQLite store is preloaded with N `video.completed` webhooks for 10
  subscriptions (N x 10 pending deliveries) before the clock starts; then the real `Deliverer` with the
  real `Sender` runs until the backlog is empty. The ceiling is the same bodies posted to the same
  subscribers by a bare loop of the same client (aiohttp) at the same concurrency, with no store, no
  signing and no vetting. Rounds are interleaved (outbox, raw, outbox, raw ...) so machine drift hits
  both alike; medians are reported.
- Latency. The full service (`create_app` under uvicorn, its own process and a fresh database) takes
  signed webhooks from an open-loop generator at a fixed rate; each subscriber records when each job's
  event first reached it, and the latency is that time minus the webhook's scheduled send time (all
  processes on one machine share `time.time()`). Run once with 10 healthy subscribers and once with 9
  healthy and 1 that never answers (each attempt to it ends at the delivery timeout). Then a crowd, at a
  lower rate (up to 30 deliveries per webhook): the 10 healthy subscribers alone, then with 20 more
  healthy ones, then with 20 that hang; the same 10 healthy subscribers are measured in all three.
- Claim cost. The store's delivery claim with 10 and with 10,000 subscriptions (all but 10 with nothing
  due, half of those disabled), the same due deliveries in both: it should cost the same.

The subscribers are one uvicorn+httptools process listening on 12 ports: a control port (which also
answers the refresher's `GET /v1/videos/{id}` as a stand-in OpenAI), 10 healthy ones and a hanging one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp

ADMIN_TOKEN = "bench-token-123"
HEALTHY = 10
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RID_MARK = b'"resource_id":"'

T = TypeVar("T")


# --- the subscribers: one process, many ports --------------------------------------------------------


class SubscriberApp:
    """A raw ASGI app: record the first arrival of each job's event per port, answer 200 (or hang)."""

    def __init__(self, control_port: int, hang_port: int) -> None:
        self.control_port = control_port
        self.hang_port = hang_port
        self.arrivals: dict[int, dict[str, float]] = {}
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        now = time.time()
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        port = scope["server"][1]
        if port == self.control_port:
            await self._control(scope, send)
            return
        if scope["path"].startswith("/extra") and port != self.hang_port:
            # One of the crowd's healthy subscribers that is not measured: answer, record nothing.
            await _respond(send, 200, b"ok", b"text/plain")
            return
        self.requests += 1
        body = b"".join(chunks)
        start = body.find(_RID_MARK)
        if start >= 0:
            start += len(_RID_MARK)
            rid = body[start : body.index(b'"', start)].decode()
            self.arrivals.setdefault(port, {}).setdefault(rid, now)
        if port == self.hang_port:
            # Never answer: wait until the sender gives up and hangs up.
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        await _respond(send, 200, b"ok", b"text/plain")

    async def _control(self, scope: dict[str, Any], send: Any) -> None:
        path: str = scope["path"]
        if path == "/_bench/counts":
            counts = {str(port): len(seen) for port, seen in self.arrivals.items()}
            await _respond(send, 200, json.dumps({"counts": counts, "requests": self.requests}).encode())
        elif path == "/_bench/arrivals":
            # Hand the record over and start a new one.
            payload = json.dumps({str(port): seen for port, seen in self.arrivals.items()}).encode()
            self.arrivals, self.requests = {}, 0
            await _respond(send, 200, payload)
        elif path.startswith("/v1/videos/"):
            # The refresher fetches the full object after a terminal webhook: a completed video.
            video_id = path.rsplit("/", 1)[1]
            now = int(time.time())
            video = {
                "id": video_id,
                "object": "video",
                "status": "completed",
                "progress": 100,
                "model": "sora-2",
                "seconds": "4",
                "size": "720x1280",
                "created_at": now,
                "completed_at": now,
            }
            await _respond(send, 200, json.dumps(video).encode())
        else:
            await _respond(send, 404, b"{}")


async def _respond(send: Any, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _bind() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _uvicorn_config(app: Any, *, lifespan: Literal["on", "off"]) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        http="httptools",
        loop="uvloop",
        lifespan=lifespan,
        access_log=False,
        log_config=None,
        log_level="warning",
        server_header=False,
        date_header=False,
    )


def _serve_subscribers() -> None:
    import uvicorn

    sockets = [_bind() for _ in range(HEALTHY + 2)]
    ports = [s.getsockname()[1] for s in sockets]
    print(json.dumps({"control": ports[0], "healthy": ports[1:-1], "hanging": ports[-1]}), flush=True)
    app = SubscriberApp(control_port=ports[0], hang_port=ports[-1])
    uvicorn.Server(_uvicorn_config(app, lifespan="off")).run(sockets=sockets)


@dataclass(frozen=True)
class Subscribers:
    proc: subprocess.Popen[str]
    control: int
    healthy: list[int]
    hanging: int

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control}"

    @staticmethod
    def url(port: int, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{port}{path}"

    async def counts(self, session: aiohttp.ClientSession) -> dict[int, int]:
        async with session.get(f"{self.control_url}/_bench/counts") as response:
            payload = await response.json()
        return {int(port): n for port, n in payload["counts"].items()}

    async def take_arrivals(self, session: aiohttp.ClientSession) -> dict[int, dict[str, float]]:
        async with session.get(f"{self.control_url}/_bench/arrivals") as response:
            payload = await response.json()
        return {int(port): seen for port, seen in payload.items()}


def _spawn(flag: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `python -m bench.delivery <flag>` and return it with the first line it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.delivery", flag, *args], stdout=subprocess.PIPE, text=True, cwd=_ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        raise RuntimeError(f"bench.delivery {flag} exited with status {proc.returncode} before starting")
    return proc, line


def _stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_subscribers() -> Subscribers:
    proc, line = _spawn("--serve-subscribers")
    ports = json.loads(line)
    _wait_for_port(ports["control"], proc)
    return Subscribers(proc, ports["control"], ports["healthy"], ports["hanging"])


def _wait_for_port(port: int, proc: subprocess.Popen[str], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {seconds:g} s")


# --- the service under test, for the latency runs ----------------------------------------------------


def _serve_app(config_json: str) -> None:
    import uvicorn

    from service.app import create_app
    from service.config import Settings, new_webhook_secret
    from service.logs import configure_logging

    config = json.loads(config_json)
    settings = Settings(
        database_path=Path(config["database"]),
        webhook_secrets=(config["webhook_secret"],),
        admin_token=ADMIN_TOKEN,
        callback_secret=new_webhook_secret(),
        allow_private_targets=True,
        retry_schedule=(0.0, 5.0, 300.0),
        delivery_timeout=config["delivery_timeout"],
        openai_base_url=config["openai_base_url"],
        # The archive copies two files per completed video: at 200 videos/s that is its own workload
        # (bench/archive.py measures it), not part of a webhook's way to the subscribers.
        archive=False,
        log_format="console",
        log_level="warning",
    )
    configure_logging(settings.log_format, settings.log_level)
    sock = _bind()
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(_uvicorn_config(create_app(settings), lifespan="on")).run(sockets=[sock])


# --- measurement 1: outbox throughput against the raw client ceiling ---------------------------------


@dataclass(frozen=True)
class Throughput:
    deliveries: int
    outbox_rate: float  # deliveries per second, outbox to subscribers
    outbox_cpu_us: float  # bench-process CPU per delivery (event loop and SQLite thread)
    raw_rate: float  # the same bodies by a bare aiohttp loop
    raw_cpu_us: float
    preload_rate: float  # webhooks per second into the store, for context
    commits_per_s: float  # store commits (fsyncs) per second during the outbox run
    ops_per_commit: float  # claims and attempt records per commit

    @property
    def ratio(self) -> float:
        return self.outbox_rate / self.raw_rate


async def _preload(store: Any, webhooks: int) -> list[str]:
    """Record `webhooks` video.completed webhooks straight into the store; return the job ids."""
    from service.store.records import IncomingWebhook

    run = os.urandom(4).hex()
    now = int(time.time())
    hooks = []
    for i in range(webhooks):
        event_id, video_id = f"evt_{run}{i:07d}", f"video_{run}{i:07d}"
        data = {"id": video_id}
        body = json.dumps(
            {"id": event_id, "object": "event", "created_at": now, "type": "video.completed", "data": data},
            separators=(",", ":"),
        )
        hooks.append(
            IncomingWebhook(f"msg_{run}{i:07d}", now, event_id, "video.completed", video_id, now, body, data)
        )
    job_ids: list[str] = []
    # Concurrent writes, as a receiver under load makes them: the store commits them in groups.
    for start in range(0, len(hooks), 500):
        outcomes = await asyncio.gather(*(store.record_webhook(h) for h in hooks[start : start + 500]))
        job_ids.extend(o.job_id for o in outcomes if o.job_id is not None)
    return job_ids


async def _event_bodies(store: Any, job_ids: list[str]) -> list[str]:
    """The emitted event of each job, exactly as the outbox will send it."""
    bodies: list[str] = []
    for job_id in job_ids:
        events = await store.job_events(job_id)
        bodies.extend(e.body for e in events if e.direction == "emitted")
    return bodies


def _succeeded(metrics: Any) -> float:
    # Polled every 2 ms during the timed run: collect only this counter, not the whole registry
    # (the registry-wide collect cost ~5% of the deliverer's CPU and was charged to the outbox).
    for family in metrics.deliveries.collect():
        for sample in family.samples:
            if sample.name == "sorahook_deliveries_total" and sample.labels.get("outcome") == "delivered":
                return float(sample.value)
    return 0.0


async def _outbox_run(
    store: Any, expected: int, concurrency: int, per_subscription: int
) -> tuple[float, float, int, int]:
    """Run the real Deliverer until `expected` deliveries succeeded.

    Returns (seconds, CPU seconds, commits, operations committed): every claim and every recorded
    attempt goes through the store's group-commit writer, and each commit is an fsync.
    """
    from service.clock import SystemClock
    from service.delivery import Deliverer
    from service.metrics import Metrics
    from service.sender import Sender
    from service.ssrf import SystemResolver

    metrics = Metrics()
    sender = Sender(resolver=SystemResolver(), allow_private=True)
    deliverer = Deliverer(
        store=store,
        sender=sender,
        clock=SystemClock(),
        metrics=metrics,
        timeout=10.0,
        concurrency=concurrency,
        per_subscription=per_subscription,
    )
    commits, ops = store.commits, store.committed_ops
    start, cpu_start = time.perf_counter(), time.process_time()
    task = asyncio.create_task(deliverer.run())
    try:
        while _succeeded(metrics) < expected:
            if task.done():
                raise RuntimeError("the deliverer stopped") from task.exception()
            if time.perf_counter() - start > 120:
                raise RuntimeError(f"only {_succeeded(metrics):.0f} of {expected} delivered after 120 s")
            await asyncio.sleep(0.002)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        commits, ops = store.commits - commits, store.committed_ops - ops
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sender.aclose()
    return elapsed, cpu, commits, ops


async def _raw_run(urls: list[str], bodies: list[str], concurrency: int) -> tuple[int, float, float]:
    """Post every body to every URL with a bare aiohttp loop; return (posts, seconds, CPU seconds)."""
    from service.signing import Signer

    secret = "whsec_" + "A" * 32
    now = int(time.time())
    work: list[tuple[str, bytes, dict[str, str]]] = []
    for body in bodies:
        event_id = json.loads(body)["id"]
        headers = Signer().headers(event_id, now, body, [secret])
        headers["user-agent"] = "sorahook/0.1 (+https://github.com/sorahook)"
        work.extend((url, body.encode(), headers) for url in urls)
    queue = iter(work)
    failures = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal failures
            for url, body, headers in queue:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    failures += response.status != 200

        start, cpu_start = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if failures:
        raise RuntimeError(f"{failures} raw posts failed")
    return len(work), elapsed, cpu


async def _throughput_round(
    subs: Subscribers, webhooks: int, concurrency: int, per_subscription: int
) -> Throughput:
    from service.clock import SystemClock
    from service.config import new_webhook_secret
    from service.store.sqlite import SqliteStore

    urls = [subs.url(port) for port in subs.healthy]
    with tempfile.TemporaryDirectory(prefix="sorahook-bench-") as tmp:
        store = await SqliteStore.open(
            Path(tmp) / "bench.db",
            clock=SystemClock(),
            retry_schedule=(0.0, 5.0, 300.0),
            callback_secret=new_webhook_secret(),
        )
        try:
            for url in urls:
                await store.create_subscription(
                    url=url, event_types=None, description=None, secret=new_webhook_secret(), ordered=False
                )
            started = time.perf_counter()
            job_ids = await _preload(store, webhooks)
            preload_rate = webhooks / (time.perf_counter() - started)
            bodies = await _event_bodies(store, job_ids)
            expected = len(bodies) * len(urls)
            backlog = await store.delivery_backlog()
            if backlog != expected or len(bodies) != webhooks:
                raise RuntimeError(
                    f"preload left {backlog} deliveries for {len(bodies)} events, not {expected}"
                )
            async with aiohttp.ClientSession() as control:
                await subs.take_arrivals(control)
                seconds, cpu, commits, ops = await _outbox_run(store, expected, concurrency, per_subscription)
                counts = await subs.counts(control)
                left = await store.delivery_backlog()
                if left or sum(counts.values()) != expected:
                    raise RuntimeError(f"backlog {left}, {sum(counts.values())} of {expected} events arrived")
                posts, raw_seconds, raw_cpu = await _raw_run(urls, bodies, concurrency)
                await subs.take_arrivals(control)
        finally:
            await store.aclose()
    return Throughput(
        deliveries=expected,
        outbox_rate=expected / seconds,
        outbox_cpu_us=cpu / expected * 1e6,
        raw_rate=posts / raw_seconds,
        raw_cpu_us=raw_cpu / posts * 1e6,
        preload_rate=preload_rate,
        commits_per_s=commits / seconds,
        ops_per_commit=ops / max(commits, 1),
    )


# --- measurement 2: latency from the receiver to the subscribers -------------------------------------


@dataclass(frozen=True)
class Latency:
    label: str
    rate: float  # webhooks per second offered
    subscribers: int  # healthy subscribers measured
    samples: list[float]  # seconds, one per (measured webhook, healthy subscriber) that arrived
    missing: int  # (webhook, healthy subscriber) pairs that never arrived
    rejected: int  # webhooks the receiver did not answer 2xx
    generator_lag: float  # worst delay of a send behind its schedule, seconds

    def percentile(self, q: float) -> float:
        """A delivery that never arrived counts as slower than any that did (inf), not as absent."""
        return _percentile(sorted(self.samples) + [float("inf")] * self.missing, q)


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def _signed_webhooks(secret: str, count: int) -> list[tuple[str, bytes, dict[str, str]]]:
    from service.signing import Signer

    signer = Signer()
    run = os.urandom(4).hex()
    now = int(time.time())
    out = []
    for i in range(count):
        video_id = f"video_{run}{i:07d}"
        body = (
            f'{{"id":"evt_{run}{i:07d}","object":"event","created_at":{now},'
            f'"type":"video.completed","data":{{"id":"{video_id}"}}}}'
        )
        out.append((video_id, body.encode(), signer.headers(f"msg_{run}{i:07d}", now, body, [secret])))
    return out


async def _open_loop(
    session: aiohttp.ClientSession, url: str, webhooks: list[tuple[str, bytes, dict[str, str]]], rate: float
) -> tuple[dict[str, float], int, float]:
    """Send on a fixed timeline whatever the service does; return (scheduled send time by video, rejected, lag).

    Latency is counted from each webhook's scheduled time, so a stall in the service (or in the
    generator) is not hidden by the generator waiting for it.
    """
    loop = asyncio.get_running_loop()
    rejected = 0
    lag = 0.0

    async def post(body: bytes, headers: dict[str, str]) -> None:
        nonlocal rejected
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            rejected += not 200 <= response.status < 300

    t0 = loop.time() + 0.05
    wall0 = time.time() + (t0 - loop.time())
    scheduled: dict[str, float] = {}
    tasks = []
    for i, (video_id, body, headers) in enumerate(webhooks):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, -delay)
        scheduled[video_id] = wall0 + i / rate
        tasks.append(asyncio.create_task(post(body, headers)))
    await asyncio.gather(*tasks)
    return scheduled, rejected, lag


def _start_service(
    tmp: str, secret: str, timeout: float, openai_base_url: str
) -> tuple[subprocess.Popen[str], int]:
    config = {
        "database": str(Path(tmp) / "sorahook.db"),
        "webhook_secret": secret,
        "delivery_timeout": timeout,
        "openai_base_url": openai_base_url,
    }
    proc, line = _spawn("--serve-app", json.dumps(config))
    return proc, int(line)


async def _until_ready(session: aiohttp.ClientSession, base: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with status {proc.returncode}")
        try:
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the service did not become ready")


async def _latency_run(
    subs: Subscribers,
    *,
    measured: list[int],
    extra: list[str],
    label: str,
    rate: float,
    seconds: float,
    warmup: float,
    timeout: float,
) -> Latency:
    """Subscribe the `measured` healthy ports and the `extra` URLs, send webhooks, time the measured ones."""
    from service.config import new_webhook_secret

    healthy = measured
    targets = [subs.url(p) for p in healthy] + extra
    secret = new_webhook_secret()
    warm = round(rate * warmup)
    webhooks = _signed_webhooks(secret, warm + round(rate * seconds))
    with tempfile.TemporaryDirectory(prefix="sorahook-bench-") as tmp:
        proc, port = _start_service(tmp, secret, timeout, f"{subs.control_url}/v1")
        base = f"http://127.0.0.1:{port}"
        try:
            connector = aiohttp.TCPConnector(limit=512)
            async with aiohttp.ClientSession(connector=connector) as session:
                await _until_ready(session, base, proc)
                auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
                for target in targets:
                    async with session.post(
                        f"{base}/v1/subscriptions", json={"url": target}, headers=auth
                    ) as response:
                        if response.status != 201:
                            raise RuntimeError(
                                f"subscription refused: {response.status} {await response.text()}"
                            )
                await subs.take_arrivals(session)
                scheduled, rejected, lag = await _open_loop(
                    session, f"{base}/webhooks/openai", webhooks, rate
                )
                # Let the tail of the healthy deliveries land (bounded: missing ones are reported).
                expected = len(webhooks) * len(healthy)
                deadline = time.monotonic() + max(5.0, 2 * timeout)
                while time.monotonic() < deadline:
                    counts = await subs.counts(session)
                    if sum(counts.get(p, 0) for p in healthy) >= expected:
                        break
                    await asyncio.sleep(0.1)
                arrivals = await subs.take_arrivals(session)
        finally:
            _stop(proc, timeout=3.0)  # a disposable database: no need to wait for a full drain
    measured = [video_id for video_id, _, _ in webhooks[warm:]]
    samples: list[float] = []
    missing = 0
    for p in healthy:
        seen = arrivals.get(p, {})
        for video_id in measured:
            arrived = seen.get(video_id)
            if arrived is None:
                missing += 1
            else:
                samples.append(arrived - scheduled[video_id])
    return Latency(label, rate, len(healthy), samples, missing, rejected, lag)


CROWD = 30  # subscribers in the crowd runs
CROWD_HANGING = 20


def _latency_plan(subs: Subscribers) -> list[tuple[str, list[int], list[str]]]:
    """(label, measured ports, extra subscriber URLs) of each latency run, in order."""
    crowd_extra = CROWD - HEALTHY
    return [
        (f"{HEALTHY} healthy", subs.healthy, []),
        (f"1 of {HEALTHY} hanging", subs.healthy[: HEALTHY - 1], [subs.url(subs.hanging)]),
        (f"{HEALTHY} healthy, crowd", subs.healthy, []),
        (
            f"{CROWD} healthy",
            subs.healthy,
            [subs.url(subs.healthy[i % HEALTHY], f"/extra{i}") for i in range(crowd_extra)],
        ),
        (
            f"{CROWD_HANGING} of {CROWD} hanging",
            subs.healthy,
            [subs.url(subs.hanging, f"/hook{i}") for i in range(CROWD_HANGING)],
        ),
    ]


# --- measurement 3: the cost of a claim against the number of subscriptions --------------------------

CLAIM_SUBSCRIPTIONS = (10, 10_000)
CLAIM_ACTIVE = 10  # subscriptions with deliveries due; the rest have none (half of them disabled)


@dataclass(frozen=True)
class ClaimCost:
    subscriptions: int
    due_us: float  # one claim of up to 64 due deliveries: its SQL and Python, no commit
    idle_us: float  # one claim with nothing due (what an idle service pays on every wake-up)
    statements: int  # SQL statements one claim ran


async def _claim_store(path: Path, subscriptions: int, webhooks: int) -> None:
    from service.clock import SystemClock
    from service.config import new_webhook_secret
    from service.store.sqlite import SqliteStore

    store = await SqliteStore.open(path, clock=SystemClock(), retry_schedule=(0.0, 5.0, 300.0))
    try:
        secret = new_webhook_secret()
        for _ in range(CLAIM_ACTIVE):
            await store.create_subscription(
                url="http://127.0.0.1:9/hook",
                event_types=None,
                description=None,
                secret=secret,
                ordered=False,
            )
        idle = await asyncio.gather(
            *(
                store.create_subscription(
                    url="http://127.0.0.1:9/idle",
                    event_types=["batch.*"],
                    description=None,
                    secret=secret,
                    ordered=False,
                )
                for _ in range(subscriptions - CLAIM_ACTIVE)
            )
        )
        await asyncio.gather(*(store.update_subscription(sub.id, {"enabled": False}) for sub in idle[::2]))
        await _preload(store, webhooks)
    finally:
        await store.aclose()


def _claim_costs(
    sizes: Sequence[int], webhooks: int = 300, claims: int = 20, rounds: int = 5
) -> list[ClaimCost]:
    """Time the store's claim operation alone (thread CPU time), inside transactions that are rolled back.

    The stores for every size are built first; then the rounds alternate between them, so the machine's
    drift falls on every size alike.
    """
    with tempfile.TemporaryDirectory(prefix="sorahook-bench-") as tmp:
        paths = {n: Path(tmp) / f"claim{n}.db" for n in sizes}
        for n, path in paths.items():
            _run(_claim_store(path, n, webhooks))
        due: dict[int, list[float]] = {n: [] for n in sizes}
        idle: dict[int, list[float]] = {n: [] for n in sizes}
        statements: dict[int, int] = {}
        for _ in range(rounds):
            for n, path in paths.items():
                statements[n] = _time_claims(path, claims, due[n], idle[n])
    return [
        ClaimCost(n, statistics.median(due[n]) * 1e6, statistics.median(idle[n]) * 1e6, statements[n])
        for n in sizes
    ]


def _time_claims(path: Path, claims: int, due: list[float], idle: list[float]) -> int:
    """Add the CPU time of `claims` claims with work due, and as many with none, to the lists.

    Returns the SQL statements one claim with work due ran.
    """
    import sqlite3

    from service.clock import SystemClock
    from service.store.sqlite import _Ops

    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    ops = _Ops(SystemClock(), (0.0, 5.0, 300.0), None, None)
    traced: list[str] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(claims):
            traced.clear()
            conn.set_trace_callback(traced.append)
            started = time.thread_time()
            got = ops.claim_deliveries(conn, 64, 3600.0, [], 8)
            due.append(time.thread_time() - started)
            conn.set_trace_callback(None)
            if len(got) != 64:
                raise RuntimeError(f"a claim took {len(got)} deliveries, not 64")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE deliveries SET next_attempt_at = next_attempt_at + 86400")
        for _ in range(claims):
            started = time.thread_time()
            got = ops.claim_deliveries(conn, 64, 3600.0, [], 8)
            idle.append(time.thread_time() - started)
            if got:
                raise RuntimeError("a claim found deliveries when none was due")
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return len(traced)


def _claim_table(costs: list[ClaimCost]) -> list[str]:
    lines = [
        f"claim cost: the store's claim of up to 64 due deliveries ({CLAIM_ACTIVE} subscriptions with work, "
        "the rest idle, half of those disabled), SQL and Python without the commit; CPU, medians",
        f"{'subscriptions':<15}{'due claim':>12}{'idle claim':>12}{'statements':>12}",
    ]
    for c in costs:
        lines.append(f"{c.subscriptions:<15,}{c.due_us:>9.0f} us{c.idle_us:>9.0f} us{c.statements:>12}")
    if len(costs) > 1:
        first, last = costs[0], costs[-1]
        lines.append(
            f"{'ratio':<15}{last.due_us / first.due_us:>10.2f} x{last.idle_us / first.idle_us:>10.2f} x"
        )
    return lines


# --- the run -----------------------------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # The service runs under uvicorn with uvloop; the bench's deliverer and clients run on it too.
    import uvloop

    result: T = uvloop.run(coro)
    return result


def _throughput_table(rounds: list[Throughput], concurrency: int, per_subscription: int) -> list[str]:
    n = rounds[0].deliveries
    lines = [
        f"outbox throughput: {n // HEALTHY:,} webhooks -> {n:,} deliveries to {HEALTHY} subscribers, "
        f"concurrency {concurrency} ({per_subscription} per subscription); CPU is the bench process's per delivery or post",
        f"{'round':<8}{'outbox/s':>10}{'raw/s':>10}{'ratio':>7}{'outbox CPU':>12}{'raw CPU':>10}"
        f"{'commits/s':>11}{'ops/commit':>12}{'preload/s':>11}",
    ]
    for i, r in enumerate(rounds, 1):
        lines.append(
            f"{i:<8}{r.outbox_rate:>10,.0f}{r.raw_rate:>10,.0f}{r.ratio:>7.2f}"
            f"{r.outbox_cpu_us:>9.0f} us{r.raw_cpu_us:>7.0f} us"
            f"{r.commits_per_s:>11,.0f}{r.ops_per_commit:>12.1f}{r.preload_rate:>11,.0f}"
        )
    med = _median_throughput(rounds)
    lines.append(
        f"{'median':<8}{med[0]:>10,.0f}{med[1]:>10,.0f}{med[2]:>7.2f}"
        f"{statistics.median(r.outbox_cpu_us for r in rounds):>9.0f} us"
        f"{statistics.median(r.raw_cpu_us for r in rounds):>7.0f} us"
        f"{statistics.median(r.commits_per_s for r in rounds):>11,.0f}"
        f"{statistics.median(r.ops_per_commit for r in rounds):>12.1f}"
    )
    return lines


def _median_throughput(rounds: list[Throughput]) -> tuple[float, float, float]:
    return (
        statistics.median(r.outbox_rate for r in rounds),
        statistics.median(r.raw_rate for r in rounds),
        statistics.median(r.ratio for r in rounds),
    )


def _latency_table(runs: list[Latency], seconds: float, timeout: float) -> list[str]:
    lines = [
        f"latency, receiver to subscriber: webhooks/s open loop for {seconds:g} s, latency of the healthy "
        f"subscribers measured, delivery timeout {timeout:g} s; an event that never arrived counts as inf",
        f"{'run':<18}{'rate/s':>7}{'measured':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'missing':>9}{'lag ms':>8}",
    ]
    for run in runs:
        lines.append(
            f"{run.label:<18}{run.rate:>7g}{len(run.samples):>10,}{run.percentile(50) * 1e3:>9.1f}"
            f"{run.percentile(90) * 1e3:>9.1f}{run.percentile(99) * 1e3:>9.1f}"
            f"{max(run.samples, default=float('nan')) * 1e3:>9.1f}{run.missing:>9,}{run.generator_lag * 1e3:>8.1f}"
        )
    return lines


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__.splitlines()[0])
    parser.add_argument("--webhooks", type=int, default=2000, help="webhooks preloaded per throughput round")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (medians are reported)")
    parser.add_argument("--concurrency", type=int, default=64, help="sends in flight, outbox and raw alike")
    parser.add_argument(
        "--per-subscription", type=int, default=8, help="the deliverer's cap per subscription (throughput)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks per second in the latency runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per latency run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before that")
    parser.add_argument("--timeout", type=float, default=2.0, help="delivery timeout in the latency runs")
    parser.add_argument(
        "--crowd-rate", type=float, default=20.0, help="webhooks per second in the crowd runs"
    )
    parser.add_argument(
        "--only",
        choices=["throughput", "latency", "crowd", "claim"],
        help="run one of the measurements (crowd: only the latency runs at --crowd-rate)",
    )
    parser.add_argument("--serve-subscribers", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-app", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_subscribers:
        _serve_subscribers()
        return
    if args.serve_app:
        _serve_app(args.serve_app)
        return

    subs = _start_subscribers()
    rounds: list[Throughput] = []
    runs: list[Latency] = []
    claims: list[ClaimCost] = []
    try:
        if args.only in (None, "claim"):
            claims = _claim_costs(CLAIM_SUBSCRIPTIONS)
            for c in claims:
                print(
                    f"  claim cost with {c.subscriptions:,} subscriptions: {c.due_us:.0f} us", file=sys.stderr
                )
        if args.only in (None, "throughput"):
            from service.app import settle_gc

            settle_gc()  # once, as the service does when it has started; outbox and raw rounds alike run under it
            for i in range(args.rounds):
                rounds.append(
                    _run(_throughput_round(subs, args.webhooks, args.concurrency, args.per_subscription))
                )
                r = rounds[-1]
                print(
                    f"  throughput round {i + 1}/{args.rounds}: outbox {r.outbox_rate:,.0f}/s, "
                    f"raw {r.raw_rate:,.0f}/s",
                    file=sys.stderr,
                )
        if args.only in (None, "latency", "crowd"):
            plan = list(enumerate(_latency_plan(subs)))
            if args.only == "crowd":
                plan = plan[2:]
            for i, (label, measured, extra) in plan:
                run = _run(
                    _latency_run(
                        subs,
                        measured=measured,
                        extra=extra,
                        label=label,
                        rate=args.rate if i < 2 else args.crowd_rate,
                        seconds=args.seconds,
                        warmup=args.warmup,
                        timeout=args.timeout,
                    )
                )
                runs.append(run)
                print(
                    f"  latency {run.label}: p50 {run.percentile(50) * 1e3:.1f} ms, "
                    f"p99 {run.percentile(99) * 1e3:.1f} ms",
                    file=sys.stderr,
                )
    finally:
        _stop(subs.proc)

    print(f"sorahook delivery bench: {os.cpu_count()} CPUs, uvloop, SQLite WAL synchronous=FULL")
    goals: list[str] = []
    if rounds:
        print("\n".join(_throughput_table(rounds, args.concurrency, args.per_subscription)))
        outbox, raw, ratio = _median_throughput(rounds)
        goals.append(f"goal: outbox >= 3,000 deliveries/s: {outbox:,.0f}/s  {_verdict(outbox >= 3000)}")
        goals.append(
            f"goal: outbox >= 0.5 x raw ceiling: {ratio:.2f} x {raw:,.0f}/s  {_verdict(ratio >= 0.5)}"
        )
    if claims:
        print("\n".join(_claim_table(claims)))
        due_ratio = claims[-1].due_us / claims[0].due_us
        goals.append(
            f"goal: claim cost with {CLAIM_SUBSCRIPTIONS[-1]:,} subscriptions ~ with {CLAIM_SUBSCRIPTIONS[0]}: "
            f"{due_ratio:.2f} x  {_verdict(due_ratio < 1.5)}"
        )
    if runs:
        print("\n".join(_latency_table(runs, args.seconds, args.timeout)))
        crowd_runs = runs[-3:] if len(runs) >= 3 else []
        runs_at_rate = runs[: len(runs) - len(crowd_runs)]
        if runs_at_rate:
            healthy = runs_at_rate[0]
            p50, p99 = healthy.percentile(50) * 1e3, healthy.percentile(99) * 1e3
            goals.append(f"goal: p50 < 20 ms with {HEALTHY} healthy: {p50:.1f} ms  {_verdict(p50 < 20)}")
            goals.append(f"goal: p99 < 100 ms with {HEALTHY} healthy: {p99:.1f} ms  {_verdict(p99 < 100)}")
        if len(runs_at_rate) > 1:
            hung = runs[1].percentile(99) * 1e3
            ratio = hung / p99
            goals.append(
                f"goal: p99 with 1 hanging <= 2 x healthy: {hung:.1f} ms = {ratio:.2f} x  {_verdict(ratio <= 2)}"
            )
        if crowd_runs:
            alone, calm, hung = (r.percentile(99) * 1e3 for r in crowd_runs)
            # None hanging is the same 30 subscribers all healthy; the 10 alone (a third of the rows to write
            # per webhook) are shown for reference.
            goals.append(
                f"goal: healthy p99 with {CROWD_HANGING} of {CROWD} hanging <= 2 x with none hanging: "
                f"{hung:.1f} ms vs {calm:.1f} ms ({CROWD} healthy) = {hung / calm:.2f} x  "
                f"{_verdict(hung <= 2 * calm)}; vs {alone:.1f} ms ({HEALTHY} subscribers alone) = {hung / alone:.2f} x"
            )
        lost = sum(r.missing for r in runs) + sum(r.rejected for r in runs)
        if lost:
            goals.append(f"warning: {lost} deliveries missing or webhooks rejected (see the table)")
    print("\n".join(goals))


if __name__ == "__main__":
    main()
