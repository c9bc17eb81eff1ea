"""Soak: minutes of mixed traffic against a real `sorahook serve --emulator` process, then a full audit.

    python -m bench.soak [--duration 180] [--rate 30] [--job-rate 3] [--warmup 30] [--drain 60]

(what `make soak` runs; not part of `make bench`). Three processes:

- the service: `python -m service serve --port P --emulator` on a fresh SQLite file in a temp data dir,
  with a short retry schedule (0,1,2,4 s) and a 2 s delivery timeout;
- 10 subscribers, one uvicorn process on 11 ports (a control port and one per subscriber): 7 healthy,
  1 failing (always 500), 1 flaky (500 on 30%), 1 hanging (holds every request past the delivery
  timeout). Each verifies the signature of every delivery with its subscription's secret and records
  the `webhook-id` of every delivery, and of every one it answered 2xx;
- this one: signed webhooks on an open-loop timeline (`--rate`/s; pre-signed raw HTTP/1.1 over
  keep-alive connections, as bench.loadgen does) for new `video_…` resources (video.completed and
  video.failed), `batch_…` ones (batch.completed) and an unmodelled event type, with ~5% duplicates
  (a `webhook-id` already accepted, re-sent) and ~5% bad signatures (wrong key, altered body, or a stale
  timestamp); job submissions through `POST /v1/jobs` (`--job-rate`/s; ~5% reuse an Idempotency-Key),
  which the emulator completes and reports back with its own signed webhooks.

Every `--interval` s a line: the server's RSS (VmRSS, and its anonymous part), database + WAL size,
webhook throughput and latency p50/p99 over the interval (open loop: from each webhook's scheduled
time), deliveries succeeded/s and attempts/s, the delivery backlog (`sorahook_delivery_backlog`, which
counts the failing and hanging subscribers' retries too), and the CPU of the server, the subscribers
and this generator. Then traffic stops and the healthy and flaky subscribers' deliveries drain
(bounded by `--drain`; the failing and hanging ones' deliveries end dead or are still being retried,
and are accounted for), and the audit runs: through the API (every accepted webhook's job with the
state its event says, or a random sample if `--verify-seconds` runs out; rejected webhooks made no
job; a sample of job timelines; every API job terminal; a reused Idempotency-Key returns the same job)
and, after a clean SIGTERM, on the database file with the subscribers' records (every accepted
webhook-id stored, no rejected one; every emitted event fanned out to every subscriber and answered
2xx by every healthy one; no delivery marked succeeded that its subscriber did not answer 2xx; no bad
signature on any delivery; `PRAGMA integrity_check`), and: no 5xx to any request, no error in the
server's log, exit status 0 on SIGTERM, and the RSS at the end of the traffic within the larger of
16 MB and 20% of the RSS after warm-up. An event delivered twice to a healthy subscriber is allowed
(at least once) and counted. The last line is PASS or FAIL; the exit status is 1 on FAIL, and the data
dir (with the server's log) is then kept.

`--subscribers healthy*10` (say) changes the mix; `--profile FILE` runs the server under cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp

from bench.delivery import _bind, _percentile, _respond, _stop, _uvicorn_config, _wait_for_port
from bench.loadgen import PATH, Connection, _check_against_library, _sign, process_cpu_seconds
from bench.receiver import free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "soak-token-1234"
RETRY_SCHEDULE = "0,1,2,4"
DELIVERY_TIMEOUT = 2.0
Role = Literal["healthy", "failing", "flaky", "hanging"]
ROLES = "healthy*7,failing,flaky,hanging"


def parse_roles(spec: str) -> list[Role]:
    """`healthy*7,failing,flaky,hanging` -> one role per subscriber."""
    out: list[Role] = []
    for part in spec.split(","):
        name, _, times = part.strip().partition("*")
        if name not in ("healthy", "failing", "flaky", "hanging"):
            raise argparse.ArgumentTypeError(f"unknown subscriber role {name!r}")
        out.extend([name] * int(times or 1))  # type: ignore[list-item]
    return out


def describe_roles(roles: Iterable[Role]) -> str:
    return ", ".join(f"{n} {role}" for role, n in Counter(roles).items())


FLAKY_RATE = 0.30
UNKNOWN_TYPE = "soak.unmodelled_event"
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
# Memory is flat if the server's RSS at the end of the traffic exceeds the RSS after warm-up by no more
# than the larger of these (SQLite's page caches and the allocator's arenas settle over minutes).
RSS_GROWTH_LIMIT_MB, RSS_GROWTH_LIMIT_PCT = 16.0, 20.0
T = TypeVar("T")


# --- the subscribers: one process, 11 ports ------------------------------------------------------------


@dataclass
class PortRecord:
    received: Counter[str] = field(default_factory=Counter)  # webhook-id -> requests
    ok: Counter[str] = field(default_factory=Counter)  # webhook-id -> requests answered 2xx
    first_ok: dict[str, float] = field(default_factory=dict)  # resource id -> first 2xx arrival (wall)
    bad_signature: int = 0


_RID_MARK = b'"resource_id":"'


def _signature_ok(key: bytes, headers: dict[bytes, bytes], body: bytes) -> bool:
    msg_id, ts = headers.get(b"webhook-id", b""), headers.get(b"webhook-timestamp", b"")
    mac = hmac.new(key, msg_id + b"." + ts + b"." + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac)
    return any(
        hmac.compare_digest(part[3:], expected)
        for part in headers.get(b"webhook-signature", b"").split()
        if part.startswith(b"v1,")
    )


class SubscriberApp:
    """A raw ASGI app: per port, record and answer as the port's role says; a control port reports."""

    def __init__(self, control: int, roles: dict[int, Role], hang: float, seed: int) -> None:
        self.control, self.roles, self.hang = control, roles, hang
        self.records = {port: PortRecord() for port in roles}
        self.keys: dict[int, bytes] = {}
        self.rng = random.Random(seed)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        port = scope["server"][1]
        if port == self.control:
            await self._control(scope["path"], body, send)
            return
        role, record = self.roles[port], self.records[port]
        headers: dict[bytes, bytes] = dict(scope["headers"])
        webhook_id = headers.get(b"webhook-id", b"").decode()
        record.received[webhook_id] += 1
        key = self.keys.get(port)
        if key is None or not _signature_ok(key, headers, body):
            record.bad_signature += 1
        if role == "hanging":
            # Hold the request until the sender gives up (its timeout) or far past it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_disconnected(receive), self.hang)
            with contextlib.suppress(Exception):
                await _respond(send, 200, b"late", b"text/plain")
            return
        failing = role == "failing" or (role == "flaky" and self.rng.random() < FLAKY_RATE)
        if not failing:
            record.ok[webhook_id] += 1
            if role == "healthy":
                start = body.find(_RID_MARK)
                if start >= 0:
                    start += len(_RID_MARK)
                    rid = body[start : body.index(b'"', start)].decode()
                    record.first_ok.setdefault(rid, time.time())
        await _respond(send, 500 if failing else 200, b"no" if failing else b"ok", b"text/plain")

    async def _control(self, path: str, body: bytes, send: Any) -> None:
        if path == "/_soak/keys":
            for port, secret in json.loads(body).items():
                self.keys[int(port)] = base64.b64decode(secret.removeprefix("whsec_"))
            await _respond(send, 200, b"{}")
        elif path == "/_soak/records":
            records = {
                str(port): {
                    "received": r.received,
                    "ok": r.ok,
                    "first_ok": r.first_ok,
                    "bad_signature": r.bad_signature,
                }
                for port, r in self.records.items()
            }
            await _respond(send, 200, json.dumps(records).encode())
        else:
            await _respond(send, 404, b"{}")


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _serve_subscribers(spec: str, hang: float, seed: int) -> None:
    import uvicorn

    kinds = parse_roles(spec)
    sockets = [_bind() for _ in range(len(kinds) + 1)]
    ports = [s.getsockname()[1] for s in sockets]
    roles = dict(zip(ports[1:], kinds, strict=True))
    print(json.dumps({"control": ports[0], "roles": roles}), flush=True)
    app = SubscriberApp(ports[0], roles, hang, seed)
    uvicorn.Server(_uvicorn_config(app, lifespan="off")).run(sockets=sockets)


@dataclass(frozen=True)
class Subscribers:
    proc: subprocess.Popen[str]
    control: int
    roles: dict[int, Role]

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control}"

    def ports(self, *roles: Role) -> list[int]:
        return [port for port, role in self.roles.items() if role in roles]

    def label(self, port: int) -> str:
        role = self.roles[port]
        if role != "healthy":
            return role
        return f"healthy{self.ports('healthy').index(port) + 1}"


def _start_subscribers(spec: str, hang: float, seed: int) -> Subscribers:
    cmd = [
        sys.executable,
        "-m",
        "bench.soak",
        "--serve-subscribers",
        f"--subscribers={spec}",
        f"--hang={hang}",
    ]
    cmd.append(f"--seed={seed}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        raise RuntimeError(f"the subscribers exited with status {proc.returncode} before starting")
    info = json.loads(line)
    _wait_for_port(info["control"], proc)
    return Subscribers(proc, info["control"], {int(p): role for p, role in info["roles"].items()})


# --- the service under test ----------------------------------------------------------------------------


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.data_dir / "sorahook.db"

    def db_sizes(self) -> tuple[int, int]:
        def size(path: Path) -> int:
            try:
                return path.stat().st_size
            except OSError:
                return 0

        wal = size(self.database.with_name("sorahook.db-wal")) + size(
            self.database.with_name("sorahook.db-shm")
        )
        return size(self.database), wal

    def rss_kb(self) -> tuple[int, int]:
        """(VmRSS, RssAnon) of the server process in kB; (0, 0) once it is gone."""
        fields: dict[str, int] = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as handle:
                for line in handle:
                    name, _, rest = line.partition(":")
                    if name in ("VmRSS", "RssAnon"):
                        fields[name] = int(rest.split()[0])
        except OSError:
            pass
        return fields.get("VmRSS", 0), fields.get("RssAnon", 0)


def _start_service(tmp: Path, profile: Path | None = None) -> Service:
    data_dir = tmp / "data"
    data_dir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORAHOOK_", "OPENAI_"))}
    env.update(
        {
            "SORAHOOK_DATABASE_URL": f"sqlite:///{data_dir / 'sorahook.db'}",
            "SORAHOOK_ALLOW_PRIVATE_TARGETS": "true",
            "SORAHOOK_ADMIN_TOKEN": ADMIN_TOKEN,
            "SORAHOOK_EMULATOR_DURATION": "2",
            "SORAHOOK_RETRY_SCHEDULE": RETRY_SCHEDULE,
            "SORAHOOK_DELIVERY_TIMEOUT": f"{DELIVERY_TIMEOUT:g}",
            "SORAHOOK_LOG_LEVEL": "warning",
            "SORAHOOK_RECONCILE_INTERVAL": "5",
            "SORAHOOK_RECONCILE_AFTER": "10",
        }
    )
    log = tmp / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                *(["-m", "cProfile", "-o", str(profile)] if profile else []),
                *("-m", "service", "serve", "--port", str(port), "--emulator"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Service(proc, port, data_dir, log)


def _stop_service(service: Service, timeout: float = 30.0) -> int:
    """SIGTERM (uvicorn's graceful stop); the exit status, or -9 if it had to be killed."""
    if service.proc.poll() is None:
        service.proc.send_signal(signal.SIGTERM)
    try:
        return service.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()
        return -9


# --- raw webhooks over keep-alive connections ----------------------------------------------------------


class PooledConnection(Connection):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.open = True
        self.idle_since = 0.0

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        super().connection_lost(exc)


class Pool:
    """Keep-alive connections, most recently used first; one idle longer than `max_idle` is dropped
    before uvicorn's keep-alive timeout (5 s) could close it under a request."""

    def __init__(self, host: str, port: int, max_idle: float = 2.0) -> None:
        self.host, self.port, self.max_idle = host, port, max_idle
        self._idle: list[PooledConnection] = []

    async def request(self, data: bytes) -> tuple[int, bytes]:
        conn = self._take()
        if conn is None:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(lambda: PooledConnection(loop), self.host, self.port)
        try:
            result = await conn.send(data)
        except BaseException:
            conn.close()
            raise
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        return result

    def _take(self) -> PooledConnection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.open and now - conn.idle_since < self.max_idle:
                return conn
            conn.close()
        return None

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


Category = Literal["new", "duplicate", "bad"]
BadKind = Literal["wrong_key", "altered_body", "stale_timestamp"]
BAD_KINDS: tuple[BadKind, ...] = ("wrong_key", "altered_body", "stale_timestamp")


@dataclass(frozen=True, slots=True)
class Hook:
    webhook_id: str
    event_id: str
    type: str
    resource_id: str
    created_at: int

    @property
    def body(self) -> str:
        return (
            f'{{"id":"{self.event_id}","object":"event","created_at":{self.created_at},'
            f'"type":"{self.type}","data":{{"id":"{self.resource_id}"}}}}'
        )


def raw_request(host: str, key: bytes, hook: Hook, now: int, bad: BadKind | None = None) -> bytes:
    body = hook.body
    timestamp = now - 3600 if bad == "stale_timestamp" else now
    signature = _sign(
        secrets.token_bytes(24) if bad == "wrong_key" else key, hook.webhook_id, timestamp, body
    )
    if bad == "altered_body":
        body = body.replace('"object":"event"', '"object":"event","x":1')
    return (
        f"POST {PATH} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nwebhook-id: {hook.webhook_id}\r\n"
        f"webhook-timestamp: {timestamp}\r\nwebhook-signature: {signature}\r\n\r\n{body}"
    ).encode()


@dataclass(slots=True)
class Sent:
    category: Category
    hook: Hook
    scheduled: float  # wall clock
    status: int = 0  # 0: no answer (connection error)
    outcome: str = ""  # the body's "status", or the error code
    latency: float = 0.0


def _answer(body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return body[:80].decode("utf-8", "replace")
    if isinstance(payload, dict):
        if "status" in payload:
            return str(payload["status"])
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("code"))
    return body[:80].decode("utf-8", "replace")


# --- the run -------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    phase: str
    rss_kb: int
    anon_kb: int
    db_bytes: int
    wal_bytes: int
    sent_rate: float
    accepted_rate: float
    p50_ms: float
    p99_ms: float
    jobs_rate: float
    delivered_rate: float
    attempt_rate: float
    backlog: float
    cpu: float
    subs_cpu: float
    own_cpu: float


@dataclass
class ApiJob:
    key: str
    job_id: str | None = None
    status: int = 0
    replay_of: str | None = None  # the job id the reused Idempotency-Key must return


async def _until_ready(session: aiohttp.ClientSession, service: Service) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"the service exited with status {service.proc.returncode}: see {service.log}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{service.url}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the service did not become ready in 30 s: see {service.log}")


class Soak:
    def __init__(
        self,
        args: argparse.Namespace,
        session: aiohttp.ClientSession,
        service: Service,
        subs: Subscribers,
        secret: str,
    ) -> None:
        self.args, self.session, self.service, self.subs = args, session, service, subs
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.rng = random.Random(args.seed)
        self.run_id = secrets.token_hex(4)
        self.host = f"127.0.0.1:{service.port}"
        self.auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        self.sent: list[Sent] = []
        self.accepted: list[Sent] = []
        self.jobs: list[ApiJob] = []
        self.sub_ids: dict[int, str] = {}
        self.samples: list[Sample] = []
        self.errors_5xx: list[str] = []
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.phase = "warm-up"
        self.started = 0.0
        self._window: list[float] = []  # webhook latencies (s) since the last sample
        self._window_sent = 0
        self._window_accepted = 0
        self._window_jobs = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.pool = Pool("127.0.0.1", service.port)

    # -- HTTP helpers --

    async def api(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        async with self.session.request(
            method, self.service.url + path, json=body, headers={**self.auth, **(headers or {})}
        ) as response:
            raw = await response.read()
            status, got = response.status, dict(response.headers)
        if status >= 500:
            self.errors_5xx.append(f"{method} {path} -> {status} {raw[:200]!r}")
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        return status, payload, got

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- setup --

    async def subscribe(self) -> None:
        keys: dict[str, str] = {}
        for port in self.subs.roles:
            status, payload, _ = await self.api(
                "POST",
                "/v1/subscriptions",
                {"url": f"http://127.0.0.1:{port}/hook", "description": f"soak {self.subs.label(port)}"},
            )
            if status != 201:
                raise RuntimeError(f"subscription refused: {status} {payload}")
            self.sub_ids[port] = payload["id"]
            keys[str(port)] = payload["secret"]
        async with self.session.post(f"{self.subs.control_url}/_soak/keys", json=keys) as response:
            response.raise_for_status()

    # -- traffic --

    def _new_hook(self, i: int) -> Hook:
        roll = self.rng.random()
        if roll < 0.55:
            event_type, prefix = "video.completed", "video"
        elif roll < 0.80:
            event_type, prefix = "video.failed", "video"
        elif roll < 0.93:
            event_type, prefix = "batch.completed", "batch"
        else:
            event_type, prefix = UNKNOWN_TYPE, "soakobj"
        tag = f"{self.run_id}{i:08d}"
        return Hook(f"msg_{tag}", f"evt_{tag}", event_type, f"{prefix}_{tag}", int(time.time()))

    async def _post_webhook(self, sent: Sent, bad: BadKind | None) -> None:
        loop_start = time.time()
        data = raw_request(self.host, self.key, sent.hook, int(loop_start), bad)
        try:
            status, body = await self.pool.request(data)
        except (ConnectionError, OSError) as exc:
            sent.outcome = f"connection error: {exc}"
            return
        done = time.time()
        sent.status, sent.outcome, sent.latency = status, _answer(body), done - sent.scheduled
        if status >= 500:
            self.errors_5xx.append(f"POST {PATH} ({sent.category}) -> {status} {body[:200]!r}")
        self._window.append(sent.latency)
        if sent.category == "new" and status == 200 and sent.outcome == "accepted":
            self.accepted.append(sent)
            self._window_accepted += 1

    async def webhooks(self, until: float) -> None:
        """Open loop: webhook i starts at t0 + i / rate, whatever the service does."""
        loop = asyncio.get_running_loop()
        rate = self.args.rate
        t0 = loop.time() + 0.01
        wall0 = time.time() + (t0 - loop.time())
        i = 0
        while True:
            at = t0 + i / rate
            if at >= until:
                break
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            roll = self.rng.random()
            bad: BadKind | None = None
            if roll < 0.05 and self.accepted:
                original = self.accepted[self.rng.randrange(len(self.accepted))]
                sent = Sent("duplicate", original.hook, wall0 + i / rate)
            elif roll < 0.10:
                bad = BAD_KINDS[i % len(BAD_KINDS)]
                sent = Sent("bad", self._new_hook(i), wall0 + i / rate)
            else:
                sent = Sent("new", self._new_hook(i), wall0 + i / rate)
            self.sent.append(sent)
            self._window_sent += 1
            self._spawn(self._post_webhook(sent, bad))
            i += 1

    async def _post_job(self, job: ApiJob) -> None:
        body = {"prompt": f"soak {job.key}", "seconds": 4, "metadata": {"client": "soak"}}
        status, payload, _ = await self.api("POST", "/v1/jobs", body, {"idempotency-key": job.key})
        job.status = status
        if status in (200, 202) and isinstance(payload, dict):
            job.job_id = payload.get("id")
            self._window_jobs += 1
        else:
            self.failures.append(f"POST /v1/jobs answered {status}: {str(payload)[:200]}")

    async def submissions(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        i = 0
        while True:
            at = t0 + i / self.args.job_rate
            if at >= until:
                break
            await asyncio.sleep(max(0.0, at - loop.time()))
            done = [j for j in self.jobs if j.job_id is not None and j.replay_of is None]
            if done and self.rng.random() < 0.05:
                original = done[self.rng.randrange(len(done))]
                job = ApiJob(original.key, replay_of=original.job_id)
            else:
                job = ApiJob(f"soak-{self.run_id}-{i}")
            self.jobs.append(job)
            self._spawn(self._post_job(job))
            i += 1

    # -- sampling --

    async def metrics(self) -> dict[str, float]:
        async with self.session.get(f"{self.service.url}/metrics") as response:
            text = await response.text()
            if response.status >= 500:
                self.errors_5xx.append(f"GET /metrics -> {response.status}")
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("sorahook_delivery_backlog "):
                out["backlog"] = float(line.split()[-1])
            elif line.startswith("sorahook_delivery_attempt_duration_seconds_count"):
                out["attempts"] = float(line.split()[-1])
            elif line.startswith("sorahook_deliveries_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                out[f"deliveries_{outcome}"] = float(line.split()[-1])
        return out

    async def sampler(self, stop: asyncio.Event) -> None:
        interval = self.args.interval
        loop = asyncio.get_running_loop()
        last_t = loop.time()
        last_cpu = process_cpu_seconds(self.service.proc.pid) or 0.0
        last_subs = process_cpu_seconds(self.subs.proc.pid) or 0.0
        last_own = time.process_time()
        first = await self.metrics()
        last_delivered, last_attempts = first.get("deliveries_succeeded", 0.0), first.get("attempts", 0.0)
        print(
            f"{'t s':>5} {'phase':<8}{'sent/s':>7}{'ok/s':>6}{'p50 ms':>8}{'p99 ms':>8}{'jobs/s':>7}"
            f"{'dlv/s':>7}{'att/s':>7}{'backlog':>8}{'RSS MB':>8}{'anon':>7}{'db MB':>7}{'wal MB':>7}"
            f"{'cpu':>5}{'subs':>5}{'gen':>5}",
            flush=True,
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            now = loop.time()
            dt = max(now - last_t, 1e-6)
            window, self._window = sorted(self._window), []
            sent, accepted, jobs = self._window_sent, self._window_accepted, self._window_jobs
            self._window_sent = self._window_accepted = self._window_jobs = 0
            cpu = process_cpu_seconds(self.service.proc.pid) or last_cpu
            subs_cpu = process_cpu_seconds(self.subs.proc.pid) or last_subs
            own_cpu = time.process_time()
            try:
                m = await self.metrics()
            except aiohttp.ClientError as exc:
                self.failures.append(f"GET /metrics failed: {exc}")
                m = {}
            delivered = m.get("deliveries_succeeded", last_delivered)
            attempts = m.get("attempts", last_attempts)
            rss, anon = self.service.rss_kb()
            db, wal = self.service.db_sizes()
            sample = Sample(
                t=now - self.started,
                phase=self.phase,
                rss_kb=rss,
                anon_kb=anon,
                db_bytes=db,
                wal_bytes=wal,
                sent_rate=sent / dt,
                accepted_rate=accepted / dt,
                p50_ms=_percentile(window, 50) * 1e3,
                p99_ms=_percentile(window, 99) * 1e3,
                jobs_rate=jobs / dt,
                delivered_rate=(delivered - last_delivered) / dt,
                attempt_rate=(attempts - last_attempts) / dt,
                backlog=m.get("backlog", float("nan")),
                cpu=(cpu - last_cpu) / dt,
                subs_cpu=(subs_cpu - last_subs) / dt,
                own_cpu=(own_cpu - last_own) / dt,
            )
            self.samples.append(sample)
            last_t, last_cpu, last_delivered = now, cpu, delivered
            last_subs, last_own, last_attempts = subs_cpu, own_cpu, attempts
            print(
                f"{sample.t:>5.0f} {sample.phase:<8}{sample.sent_rate:>7.0f}{sample.accepted_rate:>6.0f}"
                f"{sample.p50_ms:>8.1f}{sample.p99_ms:>8.1f}{sample.jobs_rate:>7.1f}"
                f"{sample.delivered_rate:>7.0f}{sample.attempt_rate:>7.0f}{sample.backlog:>8.0f}"
                f"{rss / 1024:>8.1f}{anon / 1024:>7.1f}"
                f"{db / 1e6:>7.1f}{wal / 1e6:>7.1f}{sample.cpu * 100:>4.0f}%"
                f"{sample.subs_cpu * 100:>4.0f}%{sample.own_cpu * 100:>4.0f}%",
                flush=True,
            )

    # -- drain and audit --

    async def _open_deliveries(self, port: int) -> int:
        """Deliveries of that subscriber still to be tried (pending, or failed and waiting for a retry)."""
        n = 0
        for status in ("pending", "failed"):
            code, payload, _ = await self.api(
                "GET", f"/v1/deliveries?subscription_id={self.sub_ids[port]}&status={status}&limit=1"
            )
            if code == 200 and payload["data"]:
                n += 1
        return n

    async def _unfinished_jobs(self, jobs: Iterable[ApiJob]) -> list[ApiJob]:
        left = []
        for job in jobs:
            if job.job_id is None or job.replay_of is not None:
                continue
            code, payload, _ = await self.api("GET", f"/v1/jobs/{job.job_id}")
            if code != 200 or payload["status"] not in TERMINAL:
                left.append(job)
        return left

    async def drain(self, ports: list[int], limit: float) -> tuple[float, list[int], int]:
        """Wait until none of `ports` has a delivery left to try and every API job is terminal (bounded).

        Returns (seconds waited, ports still with deliveries to try, API jobs not terminal)."""
        started = time.monotonic()
        left_jobs = await self._unfinished_jobs(self.jobs)
        open_ports: list[int] = ports
        while True:
            open_ports = [p for p in ports if await self._open_deliveries(p)]
            if left_jobs:
                left_jobs = await self._unfinished_jobs(left_jobs)
            if (not open_ports and not left_jobs) or time.monotonic() - started >= limit:
                return time.monotonic() - started, open_ports, len(left_jobs)
            await asyncio.sleep(1.0)

    async def _for_each(
        self, items: Sequence[T], check: Callable[[T], Awaitable[None]], budget: float
    ) -> int:
        """`check` each item, `--concurrency` at a time, in order, until the time budget runs out;
        returns how many were checked."""
        deadline = time.monotonic() + budget
        it = iter(items)
        done = 0

        async def worker() -> None:
            nonlocal done
            for item in it:
                await check(item)
                done += 1
                if time.monotonic() > deadline:
                    return

        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        return done

    async def audit_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # 1. Every accepted webhook of a modelled type has its job, with the state its event says.
        modelled = [s for s in self.accepted if s.hook.type != UNKNOWN_TYPE]
        order = list(modelled)
        self.rng.shuffle(order)
        checked: list[Sent] = []
        wrong: list[str] = []
        expect = {"video.completed": "completed", "video.failed": "failed", "batch.completed": "completed"}

        async def check_job(sent: Sent) -> None:
            code, payload, _ = await self.api("GET", f"/v1/jobs/{sent.hook.resource_id}")
            checked.append(sent)
            if code != 200:
                wrong.append(f"{sent.hook.resource_id}: GET answered {code}")
            elif (
                payload["status"] != expect[sent.hook.type]
                or payload["kind"] != sent.hook.resource_id.split("_")[0]
            ):
                wrong.append(
                    f"{sent.hook.resource_id} ({sent.hook.type}): {payload['kind']} {payload['status']}"
                )

        started = time.monotonic()
        await self._for_each(order, check_job, self.args.verify_seconds)
        out["jobs_checked"], out["jobs_total"] = len(checked), len(modelled)
        out["jobs_complete"] = len(checked) == len(modelled)
        out["jobs_check_s"] = time.monotonic() - started
        if wrong:
            self.failures.append(f"{len(wrong)} accepted webhooks without the right job, e.g. {wrong[:3]}")
        # 2. No rejected webhook made a job.
        bad = [s for s in self.sent if s.category == "bad" and s.hook.type != UNKNOWN_TYPE]
        bad_sample = self.rng.sample(bad, min(len(bad), 300))
        leaked: list[str] = []

        async def check_absent(sent: Sent) -> None:
            code, _, _ = await self.api("GET", f"/v1/jobs/{sent.hook.resource_id}")
            if code != 404:
                leaked.append(f"{sent.hook.resource_id}: {code}")

        await self._for_each(bad_sample, check_absent, 60)
        out["bad_checked"] = len(bad_sample)
        if leaked:
            self.failures.append(f"{len(leaked)} rejected webhooks made a job, e.g. {leaked[:3]}")
        # 3. Timelines of a sample of jobs (webhook-made and API-made): every emitted event reached every
        #    healthy subscriber.
        api_ids = [j.job_id for j in self.jobs if j.job_id is not None and j.replay_of is None]
        hook_ids = [s.hook.resource_id for s in modelled]
        half = self.args.timeline_sample // 2
        sample = self.rng.sample(api_ids, min(len(api_ids), half))
        sample += self.rng.sample(hook_ids, min(len(hook_ids), self.args.timeline_sample - len(sample)))
        timeline: dict[str, tuple[str, float]] = {}  # emitted event id -> (type, created_at)
        broken: list[str] = []

        async def read_timeline(key: str) -> None:
            code, payload, _ = await self.api("GET", f"/v1/jobs/{key}/events")
            if code != 200:
                broken.append(f"{key}: timeline answered {code}")
                return
            for event in payload["data"]:
                if event["direction"] == "emitted":
                    timeline[event["id"]] = (event["type"], float(event["created_at"]))

        await self._for_each(sample, read_timeline, 60)
        out["timelines"], out["timeline"] = len(sample), timeline
        if broken:
            self.failures.append(f"{len(broken)} job timelines unreadable, e.g. {broken[:3]}")
        # 4. The reused Idempotency-Keys returned the original job.
        replays = [j for j in self.jobs if j.replay_of is not None]
        mismatched = [j for j in replays if j.job_id != j.replay_of]
        out["replays"] = len(replays)
        if mismatched:
            self.failures.append(f"{len(mismatched)} reused Idempotency-Keys returned another job")
        api_jobs = [j for j in self.jobs if j.replay_of is None]
        statuses: Counter[str] = Counter()
        for job in api_jobs:
            if job.job_id is None:
                statuses["not created"] += 1
                continue
            code, payload, _ = await self.api("GET", f"/v1/jobs/{job.job_id}")
            statuses[payload["status"] if code == 200 else f"GET {code}"] += 1
        out["api_jobs"] = statuses
        unfinished = sum(n for status, n in statuses.items() if status not in TERMINAL)
        if unfinished:
            self.failures.append(f"{unfinished} API jobs did not reach a terminal state: {dict(statuses)}")
        return out

    async def records(self) -> dict[int, PortRecord]:
        async with self.session.get(f"{self.subs.control_url}/_soak/records") as response:
            payload = await response.json()
        return {
            int(port): PortRecord(
                Counter(r["received"]), Counter(r["ok"]), dict(r["first_ok"]), int(r["bad_signature"])
            )
            for port, r in payload.items()
        }


# --- the audit on the database file (the service stopped) ----------------------------------------------


def audit_database(
    soak: Soak, records: dict[int, PortRecord], timeline: dict[str, tuple[str, float]], drained_at: float
) -> dict[str, Any]:
    """Read the stopped service's database and hold it against what the generator and subscribers saw.

    An event emitted after `drained_at` (the end of the last drain) may still be waiting at shutdown:
    counted and reported, not a failure (it is delivered after the next start)."""
    out: dict[str, Any] = {}
    conn = sqlite3.connect(f"file:{soak.service.database}?mode=ro", uri=True)
    try:
        out["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
        stored = {row[0] for row in conn.execute("SELECT webhook_id FROM received_webhooks")}
        emitted: dict[str, tuple[str, float]] = {
            row[0]: (row[1], row[2])
            for row in conn.execute("SELECT id, type, created_at FROM events WHERE direction = 'emitted'")
        }
        by_sub: dict[str, Counter[str]] = {}
        status_of: dict[str, dict[str, str]] = {}  # subscription -> event -> delivery status
        for sub, event_id, status in conn.execute("SELECT subscription_id, event_id, status FROM deliveries"):
            by_sub.setdefault(sub, Counter())[status] += 1
            status_of.setdefault(sub, {})[event_id] = status
    finally:
        conn.close()
    if out["integrity"] != "ok":
        soak.failures.append(f"PRAGMA integrity_check: {out['integrity']}")
    out["stored_webhooks"] = len(stored)
    lost = {s.hook.webhook_id for s in soak.accepted} - stored
    if lost:
        soak.failures.append(
            f"{len(lost)} accepted webhooks are not in received_webhooks: {sorted(lost)[:3]}"
        )
    leaked = {s.hook.webhook_id for s in soak.sent if s.category == "bad"} & stored
    if leaked:
        soak.failures.append(f"{len(leaked)} webhooks answered 401 were stored")
    out["emitted"] = len(emitted)
    out["emitted_types"] = Counter(kind for kind, _ in emitted.values())
    unknown_in_timeline = set(timeline) - set(emitted)
    if unknown_in_timeline:
        soak.failures.append(f"{len(unknown_in_timeline)} timeline events are not in the events table")
    late_total = 0
    per_sub: dict[str, dict[str, Any]] = {}
    grouped: dict[str, list[str]] = {}  # failure -> the subscribers it holds for (one line for all alike)

    def fail(label: str, message: str) -> None:
        grouped.setdefault(message, []).append(label)

    for port, sub in soak.sub_ids.items():
        role, label, record = soak.subs.roles[port], soak.subs.label(port), records[port]
        ok_ids = set(record.ok)
        statuses = status_of.get(sub, {})
        per_sub[label] = {
            "statuses": dict(by_sub.get(sub, Counter())),
            "requests": sum(record.received.values()),
            "ok_ids": len(ok_ids),
            "repeat_ok": sum(1 for n in record.ok.values() if n > 1),
            "repeat_requests": sum(1 for n in record.received.values() if n > 1),
            "bad_signature": record.bad_signature,
        }
        not_fanned = [e for e in emitted if e not in statuses]
        if not_fanned:
            fail(label, f"{len(not_fanned)} emitted events have no delivery to it")
        false_success = [e for e, st in statuses.items() if st == "succeeded" and e not in ok_ids]
        if false_success:
            fail(
                label,
                f"{len(false_success)} deliveries marked succeeded that it never answered 2xx, "
                f"e.g. {false_success[:3]}",
            )
        if record.bad_signature:
            fail(label, f"{record.bad_signature} deliveries with a bad signature")
        if role != "healthy":
            continue
        missing = [e for e in emitted if e not in ok_ids]
        late = [e for e in missing if emitted[e][1] > drained_at and statuses.get(e) in ("pending", "failed")]
        late_total += len(late)
        lost_here = [e for e in missing if e not in late]
        if lost_here:
            kinds = Counter(f"{emitted[e][0]}/{statuses.get(e)}" for e in lost_here)
            fail(
                label,
                f"{len(lost_here)} emitted events never answered 2xx (type/delivery status: "
                f"{dict(kinds.most_common(5))})",
            )
        in_timeline_missing = [e for e in timeline if e not in ok_ids and e not in late]
        per_sub[label]["timeline_missing"] = len(in_timeline_missing)
        if in_timeline_missing:
            fail(label, f"{len(in_timeline_missing)} events of the sampled job timelines never arrived")
        if set(record.ok) - set(emitted):
            fail(label, f"{len(set(record.ok) - set(emitted))} deliveries of unknown events")
    for message, labels in grouped.items():
        healthy = len(soak.subs.ports("healthy"))
        who = f"each of the {healthy} healthy" if len(labels) == healthy > 1 else ", ".join(labels)
        soak.failures.append(f"{who}: {message}")
    out["late"] = late_total
    out["subscribers"] = per_sub
    return out


# --- reporting -----------------------------------------------------------------------------------------


def _mb(kb: int) -> float:
    return kb / 1024


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def _slope_mb_per_min(samples: Sequence[Sample]) -> float:
    if len(samples) < 3:
        return float("nan")
    xs = [s.t / 60 for s in samples]
    ys = [_mb(s.rss_kb) for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def _end_to_end(soak: Soak, records: dict[int, PortRecord]) -> list[float]:
    """Seconds from each accepted modelled webhook's scheduled time to its job's first event answered 2xx
    at each healthy subscriber."""
    out: list[float] = []
    for port in soak.subs.ports("healthy"):
        first = records[port].first_ok
        for sent in soak.accepted:
            at = first.get(sent.hook.resource_id)
            if at is not None:
                out.append(at - sent.scheduled)
    out.sort()
    return out


def report(
    soak: Soak, api: dict[str, Any], db: dict[str, Any], records: dict[int, PortRecord], extra: dict[str, Any]
) -> bool:
    args = soak.args
    sent = soak.sent
    by_cat: Counter[str] = Counter(s.category for s in sent)
    outcomes: dict[str, Counter[str]] = {}
    for s in sent:
        outcomes.setdefault(s.category, Counter())[f"{s.status} {s.outcome}"] += 1
    expected = {"new": "200 accepted", "duplicate": "200 duplicate", "bad": "401"}
    for category, counts in outcomes.items():
        wrong = {k: n for k, n in counts.items() if not k.startswith(expected[category])}
        if wrong:
            soak.failures.append(f"{category} webhooks answered otherwise than {expected[category]}: {wrong}")
    traffic = [s for s in soak.samples if s.phase != "drain"]
    after_warmup = [s for s in traffic if s.t >= args.warmup - 0.5]
    latencies = sorted(s.latency for s in sent if s.status)
    e2e = _end_to_end(soak, records)
    print()
    seconds = extra["traffic_s"]
    api_jobs = len([j for j in soak.jobs if j.replay_of is None])
    print(
        f"traffic: {len(sent):,} webhooks in {seconds:.0f} s ({len(sent) / seconds:.1f}/s offered): "
        f"{by_cat['new']:,} new, {by_cat['duplicate']:,} duplicates, {by_cat['bad']:,} bad signatures; "
        f"{api_jobs:,} API jobs + {api['replays']} Idempotency-Key replays"
    )
    for category in ("new", "duplicate", "bad"):
        print(f"  {category:<10} {dict(outcomes.get(category, Counter()))}")
    worst = latencies[-1] if latencies else float("nan")
    print(
        f"webhook latency (scheduled -> answered), whole run: p50 {_percentile(latencies, 50) * 1e3:.1f} ms, "
        f"p99 {_percentile(latencies, 99) * 1e3:.1f} ms, max {worst * 1e3:.1f} ms; medians of the "
        f"{len(traffic)} interval samples: p50 {_median([s.p50_ms for s in traffic]):.1f} ms, "
        f"p99 {_median([s.p99_ms for s in traffic]):.1f} ms"
    )

    def med(values: Iterable[float]) -> float:
        return _median(list(values))

    print(
        f"throughput (median of intervals): {med(s.accepted_rate for s in traffic):.0f} webhooks accepted/s, "
        f"{med(s.delivered_rate for s in traffic):.0f} deliveries succeeded/s of "
        f"{med(s.attempt_rate for s in traffic):.0f} attempts/s; CPU (100% = one core): server "
        f"{med(s.cpu for s in traffic) * 100:.0f}%, "
        f"subscribers {med(s.subs_cpu for s in traffic) * 100:.0f}%, "
        f"this generator {med(s.own_cpu for s in traffic) * 100:.0f}%"
    )
    if e2e:
        print(
            "webhook -> healthy subscriber (the job's first event answered 2xx): "
            f"p50 {_percentile(e2e, 50) * 1e3:.0f} ms, p99 {_percentile(e2e, 99) * 1e3:.0f} ms "
            f"over {len(e2e):,} (webhook, subscriber) pairs"
        )
    if after_warmup:
        start, end = after_warmup[0], traffic[-1]
        growth = _mb(end.rss_kb - start.rss_kb)
        pct = growth / _mb(start.rss_kb) * 100 if start.rss_kb else float("nan")
        peak = max(traffic, key=lambda s: s.rss_kb)
        drained_rss = extra["rss_drained"][0]
        print(
            f"RSS: {_mb(start.rss_kb):.1f} MB after warm-up (t={start.t:.0f} s), {_mb(end.rss_kb):.1f} MB "
            f"at the end of the traffic (t={end.t:.0f} s): {growth:+.1f} MB ({pct:+.1f}%); "
            f"peak {_mb(peak.rss_kb):.1f} MB at t={peak.t:.0f} s; {_mb(drained_rss):.1f} MB after the drain "
            f"and audit; slope after warm-up {_slope_mb_per_min(after_warmup):+.2f} MB/min; "
            f"anonymous {_mb(start.anon_kb):.1f} -> {_mb(end.anon_kb):.1f} MB"
        )
        limit = max(RSS_GROWTH_LIMIT_MB, _mb(start.rss_kb) * RSS_GROWTH_LIMIT_PCT / 100)
        if growth > limit:
            soak.failures.append(
                f"RSS grew {growth:.1f} MB ({pct:.1f}%) after warm-up "
                f"(limit {limit:.1f} MB: the larger of {RSS_GROWTH_LIMIT_MB:g} MB "
                f"and {RSS_GROWTH_LIMIT_PCT:g}%)"
            )
    else:
        soak.notes.append("the run ended before the warm-up did: no RSS growth figure")
    final_db, final_wal = extra["db_sizes"]
    stopped_db, stopped_wal = extra["db_final"]
    print(
        f"database: {final_db / 1e6:.1f} MB + WAL/SHM {final_wal / 1e6:.1f} MB at the end of the traffic; "
        f"{stopped_db / 1e6:.1f} MB + {stopped_wal / 1e6:.1f} MB after shutdown; "
        f"integrity_check {db['integrity']}; {db['stored_webhooks']:,} received webhooks stored, "
        f"{db['emitted']:,} events emitted {dict(db['emitted_types'].most_common())}"
    )
    print(
        f"drain: {extra['drain_s']:.0f} s (limit {args.drain:g} s); "
        f"service exit status {extra['exit_status']}"
    )
    sampled = "" if api["jobs_complete"] else " (a random sample: the time budget ran out)"
    print(
        f"audit via the API: {api['jobs_checked']:,} of {api['jobs_total']:,} accepted webhooks' jobs "
        f"checked{sampled} in {api['jobs_check_s']:.0f} s; {api['bad_checked']} rejected webhooks' resources "
        f"checked absent; {api['timelines']} job timelines ({len(api['timeline']):,} emitted events) checked "
        f"against the healthy subscribers; API jobs {dict(api['api_jobs'])}"
    )
    print("deliveries per subscriber (database) and what each subscriber saw:")
    print(
        f"  {'subscriber':<10}{'succeeded':>10}{'dead':>7}{'failed':>7}{'pending':>8}{'requests':>10}"
        f"{'2xx ids':>9}"
        f"{'2xx twice':>10}{'sent twice':>11}"
    )
    for label, info in db["subscribers"].items():
        st = info["statuses"]
        print(
            f"  {label:<10}{st.get('succeeded', 0):>10,}{st.get('dead', 0):>7,}{st.get('failed', 0):>7,}"
            f"{st.get('pending', 0):>8,}{info['requests']:>10,}{info['ok_ids']:>9,}{info['repeat_ok']:>10,}"
            f"{info['repeat_requests']:>11,}"
        )
    for label, info in db["subscribers"].items():
        if label.startswith("healthy"):
            continue
        st = info["statuses"]
        print(
            f"  {label}: of {sum(st.values()):,} deliveries {st.get('succeeded', 0):,} delivered, "
            f"{st.get('dead', 0):,} dead after the last attempt, "
            f"{st.get('pending', 0) + st.get('failed', 0):,} still to be tried at shutdown"
        )
    twice = sum(info["repeat_ok"] for label, info in db["subscribers"].items() if label.startswith("healthy"))
    if db["late"]:
        soak.notes.append(
            f"{db['late']} (event, healthy subscriber) deliveries of events emitted after the last drain "
            "were still waiting at shutdown (delivered after the next start)"
        )
    print(
        f"duplicates beyond at-least-once: {twice} event ids answered 2xx more than once at a healthy "
        "subscriber (allowed, reported)"
    )
    if soak.errors_5xx:
        soak.failures.append(
            f"{len(soak.errors_5xx)} responses with a 5xx status, e.g. {soak.errors_5xx[:3]}"
        )
    log_errors = extra["log_errors"]
    print(f"server log (SORAHOOK_LOG_LEVEL=warning): {dict(extra['log_levels'].most_common())}")
    for line in log_errors[:5]:
        print(f"  {line[:300]}")
    if log_errors:
        soak.failures.append(f"the server logged {len(log_errors)} errors")
    if extra["exit_status"] != 0:
        soak.failures.append(f"the service exited with status {extra['exit_status']} on SIGTERM")
    for note in soak.notes:
        print(f"note: {note}")
    for failure in soak.failures:
        print(f"FAILED: {failure}")
    ok = not soak.failures
    print(
        f"{'PASS' if ok else 'FAIL'}: soak {args.duration:g} s at {args.rate:g} webhooks/s "
        f"+ {args.job_rate:g} jobs/s, {len(soak.failures)} failed checks"
    )
    return ok


def read_log(log: Path) -> tuple[Counter[str], list[str]]:
    """The server's log lines by level (logger/level for warnings), and the lines at error or above."""
    levels: Counter[str] = Counter()
    errors: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            level, logger = str(record.get("level", "?")), str(record.get("logger", "?"))
        except ValueError:
            level, logger = "unparsed", "?"
        levels[f"{level} ({logger})" if level in ("warning", "info") else level] += 1
        if level in ("error", "critical") or line.startswith("Traceback"):
            errors.append(line)
    return levels, errors


async def _soak(args: argparse.Namespace, service: Service, subs: Subscribers) -> tuple[bool, Soak]:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await _until_ready(session, service)
        secret = (service.data_dir / "emulator_webhook_secret").read_text().strip()
        soak = Soak(args, session, service, subs, secret)
        # Our signatures must be what the library makes (the same check bench.loadgen does).
        _check_against_library(secret, raw_request(soak.host, soak.key, soak._new_hook(0), int(time.time())))
        await soak.subscribe()
        loop = asyncio.get_running_loop()
        soak.started = loop.time()
        until = soak.started + args.duration
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(soak.sampler(stop_sampling))

        async def phase_clock() -> None:
            await asyncio.sleep(min(args.warmup, args.duration))
            soak.phase = "traffic"

        clock = asyncio.create_task(phase_clock())
        await asyncio.gather(soak.webhooks(until), soak.submissions(until))
        await soak._settle()
        traffic_s = loop.time() - soak.started
        clock.cancel()
        db_sizes = service.db_sizes()
        soak.phase = "drain"
        # The failing and hanging subscribers are left out: their deliveries end dead after the last
        # attempt of the schedule, or are still being retried (accounted for at the end).
        drain_s, open_ports, left_jobs = await soak.drain(subs.ports("healthy", "flaky"), args.drain)
        stop_sampling.set()
        await sampler
        healthy_open = [subs.label(p) for p in open_ports if subs.roles[p] == "healthy"]
        if healthy_open:
            soak.failures.append(
                f"after {drain_s:.0f} s of drain, healthy subscribers still had deliveries to try: "
                f"{', '.join(healthy_open)}"
            )
        others = [subs.label(p) for p in open_ports if subs.roles[p] != "healthy"]
        if others:
            soak.notes.append(f"still retrying after the drain: {', '.join(others)}")
        if left_jobs:
            soak.failures.append(f"{left_jobs} API jobs not terminal after {drain_s:.0f} s of drain")
        api = await soak.audit_api()
        # Events emitted during the audit (archive outcomes, mostly) get a short while to reach the healthy.
        await soak.drain(subs.ports("healthy"), 15.0)
        drained_at = time.time()
        rss_drained = service.rss_kb()
        soak.pool.close()
        exit_status = _stop_service(service)
        records = await soak.records()  # the service is stopped: nothing more arrives
    db_final = service.db_sizes()
    db = audit_database(soak, records, api["timeline"], drained_at)
    log_levels, log_errors = read_log(service.log)
    extra = {
        "traffic_s": traffic_s,
        "drain_s": drain_s,
        "db_sizes": db_sizes,
        "db_final": db_final,
        "rss_drained": rss_drained,
        "exit_status": exit_status,
        "log_levels": log_levels,
        "log_errors": log_errors,
    }
    return report(soak, api, db, records, extra), soak


def _run_soak(args: argparse.Namespace) -> bool:
    import uvloop

    tmp = Path(tempfile.mkdtemp(prefix="sorahook-soak-"))
    subs = _start_subscribers(args.subscribers, hang=DELIVERY_TIMEOUT * 5, seed=args.seed)
    service: Service | None = None
    ok = False
    try:
        service = _start_service(tmp, args.profile)
        print(
            f"soak: {args.duration:g} s ({args.warmup:g} s warm-up) at {args.rate:g} webhooks/s and "
            f"{args.job_rate:g} jobs/s against `sorahook serve --emulator` (pid {service.proc.pid}, "
            f"port {service.port}); subscribers: {describe_roles(subs.roles.values())} (flaky: "
            f"{FLAKY_RATE:.0%} 500); retry schedule {RETRY_SCHEDULE} s, delivery timeout "
            f"{DELIVERY_TIMEOUT:g} s; {os.cpu_count()} CPUs; data in {tmp}",
            flush=True,
        )
        result: tuple[bool, Soak] = uvloop.run(_soak(args, service, subs))
        ok = result[0]
    finally:
        if service is not None and service.proc.poll() is None:
            _stop_service(service)
        _stop(subs.proc)
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"data dir and server log kept in {tmp}")
    return ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of traffic (180)")
    parser.add_argument("--rate", type=float, default=30.0, help="webhooks per second (30)")
    parser.add_argument("--job-rate", type=float, default=3.0, help="POST /v1/jobs per second (3)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the start RSS (30)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples (5)")
    parser.add_argument("--drain", type=float, default=60.0, help="longest wait for the backlog (60)")
    parser.add_argument("--verify-seconds", type=float, default=90.0, help="budget to check jobs (90)")
    parser.add_argument("--timeline-sample", type=int, default=300, help="job timelines checked (300)")
    parser.add_argument("--concurrency", type=int, default=16, help="API calls in flight in the audit (16)")
    parser.add_argument(
        "--subscribers", default=ROLES, help=f"roles, one per subscriber ({ROLES}); at least one healthy"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the data dir even on PASS")
    parser.add_argument("--profile", type=Path, help="run the server under cProfile, stats to this file")
    parser.add_argument("--serve-subscribers", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hang", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_subscribers:
        _serve_subscribers(args.subscribers, args.hang, args.seed)
        return
    try:
        roles = parse_roles(args.subscribers)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(f"--subscribers: {exc}")
    if "healthy" not in roles:
        parser.error("--subscribers: at least one must be healthy")
    if not _run_soak(args):
        sys.exit(1)


if __name__ == "__main__":
    main()
