"""The soak's drain and audit: through the API while the service runs, then on its database file.

Through the API: every accepted webhook's job with the state its event says (or a random sample if the
time budget runs out); rejected webhooks made no job; a sample of job timelines; every API job terminal;
a reused Idempotency-Key returns the same job. On the stopped service's database, held against the
subscribers' records: every accepted webhook-id stored, no rejected one; every emitted event fanned out
to every subscriber and answered 2xx by every healthy one; no delivery marked succeeded that its
subscriber did not answer 2xx; no bad signature on any delivery; `PRAGMA integrity_check`.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from bench.soak.server import Api, Findings
from bench.soak.subscribers import PortRecord, Subscribers
from bench.soak.traffic import UNKNOWN_TYPE, ApiJob, Sent, Traffic

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
T = TypeVar("T")


class Audit:
    def __init__(
        self,
        api: Api,
        subs: Subscribers,
        sub_ids: dict[int, str],
        traffic: Traffic,
        findings: Findings,
        rng: random.Random,
        concurrency: int,
    ) -> None:
        self.api, self.subs, self.sub_ids, self.traffic = api, subs, sub_ids, traffic
        self.findings, self.rng, self.concurrency = findings, rng, concurrency

    # -- drain --

    async def _open_deliveries(self, port: int) -> int:
        """Deliveries of that subscriber still to be tried (pending, or failed and waiting for a retry)."""
        n = 0
        for status in ("pending", "failed"):
            code, payload, _ = await self.api.call(
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
            code, payload, _ = await self.api.call("GET", f"/v1/jobs/{job.job_id}")
            if code != 200 or payload["status"] not in TERMINAL:
                left.append(job)
        return left

    async def drain(self, ports: list[int], limit: float) -> tuple[float, list[int], int]:
        """Wait until none of `ports` has a delivery left to try and every API job is terminal (bounded).

        Returns (seconds waited, ports still with deliveries to try, API jobs not terminal)."""
        started = time.monotonic()
        left_jobs = await self._unfinished_jobs(self.traffic.jobs)
        open_ports: list[int] = ports
        while True:
            open_ports = [p for p in ports if await self._open_deliveries(p)]
            if left_jobs:
                left_jobs = await self._unfinished_jobs(left_jobs)
            if (not open_ports and not left_jobs) or time.monotonic() - started >= limit:
                return time.monotonic() - started, open_ports, len(left_jobs)
            await asyncio.sleep(1.0)

    # -- through the API --

    async def _for_each(
        self, items: Sequence[T], check: Callable[[T], Awaitable[None]], budget: float
    ) -> int:
        """`check` each item, `concurrency` at a time, in order, until the time budget runs out;
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

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return done

    async def through_api(self, verify_seconds: float, timeline_sample: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        failures = self.findings.failures
        # 1. Every accepted webhook of a modelled type has its job, with the state its event says.
        modelled = [s for s in self.traffic.accepted if s.hook.type != UNKNOWN_TYPE]
        order = list(modelled)
        self.rng.shuffle(order)
        checked: list[Sent] = []
        wrong: list[str] = []
        expect = {"video.completed": "completed", "video.failed": "failed", "batch.completed": "completed"}

        async def check_job(sent: Sent) -> None:
            code, payload, _ = await self.api.call("GET", f"/v1/jobs/{sent.hook.resource_id}")
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
        await self._for_each(order, check_job, verify_seconds)
        out["jobs_checked"], out["jobs_total"] = len(checked), len(modelled)
        out["jobs_complete"] = len(checked) == len(modelled)
        out["jobs_check_s"] = time.monotonic() - started
        if wrong:
            failures.append(f"{len(wrong)} accepted webhooks without the right job, e.g. {wrong[:3]}")
        # 2. No rejected webhook made a job.
        bad = [s for s in self.traffic.sent if s.category == "bad" and s.hook.type != UNKNOWN_TYPE]
        bad_sample = self.rng.sample(bad, min(len(bad), 300))
        leaked: list[str] = []

        async def check_absent(sent: Sent) -> None:
            code, _, _ = await self.api.call("GET", f"/v1/jobs/{sent.hook.resource_id}")
            if code != 404:
                leaked.append(f"{sent.hook.resource_id}: {code}")

        await self._for_each(bad_sample, check_absent, 60)
        out["bad_checked"] = len(bad_sample)
        if leaked:
            failures.append(f"{len(leaked)} rejected webhooks made a job, e.g. {leaked[:3]}")
        # 3. Timelines of a sample of jobs (webhook-made and API-made): every emitted event reached every
        #    healthy subscriber.
        jobs = self.traffic.jobs
        api_ids = [j.job_id for j in jobs if j.job_id is not None and j.replay_of is None]
        hook_ids = [s.hook.resource_id for s in modelled]
        half = timeline_sample // 2
        sample = self.rng.sample(api_ids, min(len(api_ids), half))
        sample += self.rng.sample(hook_ids, min(len(hook_ids), timeline_sample - len(sample)))
        timeline: dict[str, tuple[str, float]] = {}  # emitted event id -> (type, created_at)
        broken: list[str] = []

        async def read_timeline(key: str) -> None:
            code, payload, _ = await self.api.call("GET", f"/v1/jobs/{key}/events")
            if code != 200:
                broken.append(f"{key}: timeline answered {code}")
                return
            for event in payload["data"]:
                if event["direction"] == "emitted":
                    timeline[event["id"]] = (event["type"], float(event["created_at"]))

        await self._for_each(sample, read_timeline, 60)
        out["timelines"], out["timeline"] = len(sample), timeline
        if broken:
            failures.append(f"{len(broken)} job timelines unreadable, e.g. {broken[:3]}")
        # 4. The reused Idempotency-Keys returned the original job.
        replays = [j for j in jobs if j.replay_of is not None]
        mismatched = [j for j in replays if j.job_id != j.replay_of]
        out["replays"] = len(replays)
        if mismatched:
            failures.append(f"{len(mismatched)} reused Idempotency-Keys returned another job")
        statuses: Counter[str] = Counter()
        for job in (j for j in jobs if j.replay_of is None):
            if job.job_id is None:
                statuses["not created"] += 1
                continue
            code, payload, _ = await self.api.call("GET", f"/v1/jobs/{job.job_id}")
            statuses[payload["status"] if code == 200 else f"GET {code}"] += 1
        out["api_jobs"] = statuses
        unfinished = sum(n for status, n in statuses.items() if status not in TERMINAL)
        if unfinished:
            failures.append(f"{unfinished} API jobs did not reach a terminal state: {dict(statuses)}")
        return out

    # -- on the database file (the service stopped) --

    def database(
        self, records: dict[int, PortRecord], timeline: dict[str, tuple[str, float]], drained_at: float
    ) -> dict[str, Any]:
        """Read the stopped service's database and hold it against what the generator and subscribers saw.

        An event emitted after `drained_at` (the end of the last drain) may still be waiting at shutdown:
        counted and reported, not a failure (it is delivered after the next start)."""
        out: dict[str, Any] = {}
        failures = self.findings.failures
        conn = sqlite3.connect(f"file:{self.api.service.database}?mode=ro", uri=True)
        try:
            out["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
            stored = {row[0] for row in conn.execute("SELECT webhook_id FROM received_webhooks")}
            emitted: dict[str, tuple[str, float]] = {
                row[0]: (row[1], row[2])
                for row in conn.execute("SELECT id, type, created_at FROM events WHERE direction = 'emitted'")
            }
            by_sub: dict[str, Counter[str]] = {}
            status_of: dict[str, dict[str, str]] = {}  # subscription -> event -> delivery status
            for sub, event_id, status in conn.execute(
                "SELECT subscription_id, event_id, status FROM deliveries"
            ):
                by_sub.setdefault(sub, Counter())[status] += 1
                status_of.setdefault(sub, {})[event_id] = status
        finally:
            conn.close()
        if out["integrity"] != "ok":
            failures.append(f"PRAGMA integrity_check: {out['integrity']}")
        out["stored_webhooks"] = len(stored)
        lost = {s.hook.webhook_id for s in self.traffic.accepted} - stored
        if lost:
            failures.append(f"{len(lost)} accepted webhooks are not in received_webhooks: {sorted(lost)[:3]}")
        leaked = {s.hook.webhook_id for s in self.traffic.sent if s.category == "bad"} & stored
        if leaked:
            failures.append(f"{len(leaked)} webhooks answered 401 were stored")
        out["emitted"] = len(emitted)
        out["emitted_types"] = Counter(kind for kind, _ in emitted.values())
        unknown_in_timeline = set(timeline) - set(emitted)
        if unknown_in_timeline:
            failures.append(f"{len(unknown_in_timeline)} timeline events are not in the events table")
        late_total = 0
        per_sub: dict[str, dict[str, Any]] = {}
        grouped: dict[str, list[str]] = {}  # failure -> the subscribers it holds for (one line for all alike)

        def fail(label: str, message: str) -> None:
            grouped.setdefault(message, []).append(label)

        for port, sub in self.sub_ids.items():
            role, label, record = self.subs.roles[port], self.subs.label(port), records[port]
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
            late = [
                e for e in missing if emitted[e][1] > drained_at and statuses.get(e) in ("pending", "failed")
            ]
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
            healthy = len(self.subs.ports("healthy"))
            who = f"each of the {healthy} healthy" if len(labels) == healthy > 1 else ", ".join(labels)
            failures.append(f"{who}: {message}")
        out["late"] = late_total
        out["subscribers"] = per_sub
        return out
