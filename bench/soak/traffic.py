"""What the soak sends, and what each request got.

Signed webhooks on an open-loop timeline (bench.loadgen's `pace` and `Pool`, signed by the service's own
`Signer`): new `video_…` resources (video.completed and video.failed), `batch_…` ones (batch.completed)
and an unmodelled event type, with ~5% duplicates (a `webhook-id` already accepted, re-sent) and ~5% bad
signatures (wrong key, altered body, or a stale timestamp). And job submissions through `POST /v1/jobs`
(~5% reuse an Idempotency-Key), which the emulator completes and reports back with its own webhooks.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal

from bench.loadgen import PATH, Pool, pace, webhook_request
from bench.soak.server import Api, Findings
from service.config import new_webhook_secret
from service.signing import Signer

Category = Literal["new", "duplicate", "bad"]
BadKind = Literal["wrong_key", "altered_body", "stale_timestamp"]
BAD_KINDS: tuple[BadKind, ...] = ("wrong_key", "altered_body", "stale_timestamp")
UNKNOWN_TYPE = "soak.unmodelled_event"
# Connections to the service at most: far more than the rate keeps busy, so only a stall of seconds
# makes a webhook wait for one (and its latency, counted from its schedule, then shows the wait).
CONNECTIONS = 256


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


@dataclass(slots=True)
class Sent:
    category: Category
    hook: Hook
    scheduled: float  # wall clock
    status: int = 0  # 0: no answer (connection error)
    outcome: str = ""  # the body's "status", or the error code
    latency: float = 0.0


@dataclass
class ApiJob:
    key: str
    job_id: str | None = None
    status: int = 0
    replay_of: str | None = None  # the job id the reused Idempotency-Key must return


@dataclass
class Window:
    """What happened since the sampler last looked."""

    latencies: list[float]  # webhook latencies, seconds
    sent: int = 0
    accepted: int = 0
    jobs: int = 0


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


class Traffic:
    def __init__(
        self,
        api: Api,
        findings: Findings,
        secret: str,
        rng: random.Random,
        rate: float,
        job_rate: float,
    ) -> None:
        self.api, self.findings, self.rng, self.rate, self.job_rate = api, findings, rng, rate, job_rate
        self.secret, self.wrong_secret = secret, new_webhook_secret()
        self.signer = Signer()
        self.run_id = secrets.token_hex(4)
        self.host = f"127.0.0.1:{api.service.port}"
        self.pool = Pool("127.0.0.1", api.service.port, CONNECTIONS)
        self.sent: list[Sent] = []
        self.accepted: list[Sent] = []
        self.jobs: list[ApiJob] = []
        self._window = Window([])
        self._tasks: set[asyncio.Task[None]] = set()

    def take_window(self) -> Window:
        window, self._window = self._window, Window([])
        window.latencies.sort()
        return window

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for every request still in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- webhooks --

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

    def _request(self, hook: Hook, now: int, bad: BadKind | None) -> bytes:
        body = hook.body
        timestamp = now - 3600 if bad == "stale_timestamp" else now
        secret = self.wrong_secret if bad == "wrong_key" else self.secret
        signature = self.signer.sign(hook.webhook_id, timestamp, body, secret)
        if bad == "altered_body":
            body = body.replace('"object":"event"', '"object":"event","x":1')
        return webhook_request(self.host, hook.webhook_id, timestamp, body, signature)

    async def _post_webhook(self, sent: Sent, bad: BadKind | None) -> None:
        data = self._request(sent.hook, int(time.time()), bad)
        try:
            status, body = await self.pool.request(data)
        except (ConnectionError, OSError) as exc:
            sent.outcome = f"connection error: {exc}"
            return
        done = time.time()
        sent.status, sent.outcome, sent.latency = status, _answer(body), done - sent.scheduled
        if status >= 500:
            self.findings.errors_5xx.append(f"POST {PATH} ({sent.category}) -> {status} {body[:200]!r}")
        self._window.latencies.append(sent.latency)
        if sent.category == "new" and status == 200 and sent.outcome == "accepted":
            self.accepted.append(sent)
            self._window.accepted += 1

    async def webhooks(self, until: float) -> None:
        """Open loop: webhook i starts at t0 + i / rate, whatever the service does, until `until`
        (the event loop's time)."""
        start = time.perf_counter_ns() + 10_000_000
        wall0 = time.time() + (start - time.perf_counter_ns()) / 1e9
        seconds = until - asyncio.get_running_loop().time() - 0.01
        rate = self.rate

        def fire(i: int, scheduled: int) -> None:
            at = wall0 + (scheduled - start) / 1e9
            roll = self.rng.random()
            bad: BadKind | None = None
            if roll < 0.05 and self.accepted:
                original = self.accepted[self.rng.randrange(len(self.accepted))]
                sent = Sent("duplicate", original.hook, at)
            elif roll < 0.10:
                bad = BAD_KINDS[i % len(BAD_KINDS)]
                sent = Sent("bad", self._new_hook(i), at)
            else:
                sent = Sent("new", self._new_hook(i), at)
            self.sent.append(sent)
            self._window.sent += 1
            self._spawn(self._post_webhook(sent, bad))

        # A millisecond late does not matter at this rate; spinning for it would show in the CPU column.
        await pace(rate, max(0, math.ceil(seconds * rate)), fire, start_ns=start, spin=0)

    # -- job submissions --

    async def _post_job(self, job: ApiJob) -> None:
        body = {"prompt": f"soak {job.key}", "seconds": 4, "metadata": {"client": "soak"}}
        status, payload, _ = await self.api.call("POST", "/v1/jobs", body, {"idempotency-key": job.key})
        job.status = status
        if status in (200, 202) and isinstance(payload, dict):
            job.job_id = payload.get("id")
            self._window.jobs += 1
        else:
            self.findings.failures.append(f"POST /v1/jobs answered {status}: {str(payload)[:200]}")

    async def submissions(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        i = 0
        while True:
            at = t0 + i / self.job_rate
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
