"""The reconciler: finds jobs whose webhook never came and asks OpenAI, with list calls where it can.

One pass: select stale jobs (non-terminal, known resource id, not updated for `stale_after`, backoff
passed). Videos are found by paging `GET /videos?order=desc&limit=100` from the newest until every stale
video was seen or the pages went older than the oldest stale job; what the list missed is retrieved by
id. Other kinds are retrieved by id with bounded concurrency. Everything learned goes through the
store's shared path (state machine, events, outbox) with `source: "reconcile"`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from service.clock import Clock
from service.domain import Observation, observation_from_resource
from service.errors import OpenAIError, PermanentOpenAIError
from service.metrics import Metrics
from service.openai_client import OpenAIClient
from service.store.records import Job
from service.store.sqlite import SqliteStore
from service.workers import backoff

log = logging.getLogger("sorahook.reconciler")

LIST_PAGE = 100
CREATED_SLACK = 120.0  # a video is created at OpenAI a little after our job row


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after}s")
        self.retry_after = retry_after


@dataclass
class PassReport:
    stale: int = 0
    calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    rate_limited: bool = False
    not_found: set[str] = field(default_factory=set)


class Reconciler:
    name = "reconciler"

    def __init__(
        self,
        *,
        store: SqliteStore,
        openai: OpenAIClient,
        clock: Clock,
        metrics: Metrics,
        interval: float,
        stale_after: float,
        max_calls: int = 150,
        concurrency: int = 8,
        backoff_cap: float = 3600.0,
    ) -> None:
        self.store, self.openai, self.clock, self.metrics = store, openai, clock, metrics
        self.interval, self.stale_after = interval, stale_after
        self.max_calls, self.concurrency, self.backoff_cap = max_calls, concurrency, backoff_cap
        self.paused_until = 0.0
        self._rate_strikes = 0

    async def run_once(self) -> PassReport:
        report = PassReport()
        now = self.clock.now()
        if now < self.paused_until:
            return report
        stale = await self.store.stale_jobs(now - self.stale_after, limit=self.max_calls * LIST_PAGE)
        report.stale = len(stale)
        if not stale:
            return report
        budget = [self.max_calls]
        learned: list[tuple[str, Observation | None]] = []
        try:
            videos = [j for j in stale if j.kind == "video"]
            others = [j for j in stale if j.kind != "video"]
            missing = await self._list_videos(videos, learned, budget, report)
            await self._retrieve_each(missing + others, learned, budget, report)
            self._rate_strikes = 0
        except RateLimited as exc:
            self._rate_strikes += 1
            pause = max(exc.retry_after, backoff(self._rate_strikes, self.interval, self.backoff_cap))
            self.paused_until = self.clock.now() + pause
            report.rate_limited = True
            log.warning("OpenAI rate-limited the reconciler", extra={"pause": round(pause, 1)})
        if learned:
            outcomes = await self.store.reconciled(learned, base_delay=self.interval, cap=self.backoff_cap)
            for job_id, outcome in outcomes:
                if job_id in report.not_found:
                    outcome = "not_found"
                report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
        for outcome, n in report.outcomes.items():
            self.metrics.reconciliations.labels(outcome=outcome).inc(n)
        self.metrics.reconcile_calls.observe(report.calls)
        if report.outcomes.get("updated"):
            log.info("reconciler caught up missed webhooks", extra={"updated": report.outcomes["updated"]})
        return report

    def _charge(self, budget: list[int], report: PassReport) -> bool:
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        report.calls += 1
        return True

    async def _list_videos(
        self,
        videos: list[Job],
        learned: list[tuple[str, Observation | None]],
        budget: list[int],
        report: PassReport,
    ) -> list[Job]:
        """Page the list endpoint over the span that holds the stale videos; return those it did not see."""
        if not videos:
            return []
        wanted = {j.resource_id: j for j in videos if j.resource_id}
        oldest = min(j.created_at for j in videos) - CREATED_SLACK
        after: str | None = None
        # Listing pays off when it covers more than one job per call; with one or two, retrieve them.
        if len(wanted) <= 2:
            return videos
        while wanted and self._charge(budget, report):
            try:
                page = await self.openai.list_videos(after=after, limit=LIST_PAGE, order="desc")
            except OpenAIError as exc:
                if exc.status == 429:
                    raise RateLimited(exc.retry_after or self.interval) from None
                self.metrics.reconciliations.labels(outcome="error").inc()
                break
            data = page.get("data") or []
            for obj in data:
                job = wanted.pop(str(obj.get("id")), None) if isinstance(obj, dict) else None
                if job is not None:
                    learned.append((job.id, observation_from_resource("video", obj)))
            if not page.get("has_more") or not data:
                break
            last_created = data[-1].get("created_at")
            if isinstance(last_created, (int, float)) and last_created < oldest:
                break
            after = page.get("last_id") or data[-1].get("id")
        return list(wanted.values())

    async def _retrieve_each(
        self,
        jobs: list[Job],
        learned: list[tuple[str, Observation | None]],
        budget: list[int],
        report: PassReport,
    ) -> None:
        semaphore = asyncio.Semaphore(self.concurrency)
        limited: list[float] = []

        async def one(job: Job) -> None:
            assert job.resource_id is not None
            async with semaphore:
                if limited or not self._charge(budget, report):
                    return
                try:
                    obj = await self.openai.retrieve(job.kind, job.resource_id)
                except PermanentOpenAIError as exc:
                    if exc.status == 404:
                        error = {
                            "code": "resource_not_found",
                            "message": f"OpenAI no longer knows {job.resource_id}",
                        }
                        learned.append((job.id, Observation(status="failed", error=error)))
                        report.not_found.add(job.id)
                    else:
                        report.outcomes["error"] = report.outcomes.get("error", 0) + 1
                    return
                except OpenAIError as exc:
                    if exc.status == 429:
                        limited.append(exc.retry_after or self.interval)
                    else:
                        report.outcomes["error"] = report.outcomes.get("error", 0) + 1
                    return
                learned.append((job.id, observation_from_resource(job.kind, obj)))

        await asyncio.gather(*(one(job) for job in jobs))
        if limited:
            raise RateLimited(max(limited))

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciliation pass failed")
            await asyncio.sleep(self.interval)
