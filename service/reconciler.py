"""The reconciler: finds jobs whose webhook never came and asks OpenAI, with list calls where it can.

One pass:
1. Announce `video.expired` for completed videos whose assets expired (store only, no OpenAI call).
2. Select stale jobs: non-terminal, with a resource id, not updated for `stale_after`, per-job backoff
   passed (an indexed query). None stale: the pass ends here, with no OpenAI call.
3. Videos (three or more): retrieve the newest stale video by id, then page
   `GET /videos?order=desc&limit=100&after=<its id>`, so the pages cover just the span of creation
   times that holds the stale ones; stop as soon as every stale video was seen, the pages went older
   than the oldest one, or listing would cost more calls than asking each by id. What the pages did not
   show is retrieved by id, like every other kind, with bounded concurrency.
4. Everything learned goes through the store's shared path (state machine, events, outbox) with
   `source: "reconcile"`, in chunks; a 404 fails the job with `resource_not_found`.

Limits: at most `max_calls` OpenAI calls per pass, drawn from a `CallBudget` shared with the progress
poller when one is given (so both together stay under the ceiling). A 429 (or a 5xx, a network or an auth error) stops
the pass's new calls and pauses the reconciler for at least the server's `Retry-After`, and longer after
each pass halted in a row. Per job, an unchanged answer pushes the next question further out (the
store's `reconciled`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.clock import Clock
from service.domain import Observation, observation_from_resource
from service.domain.retry import backoff
from service.errors import OpenAIError, TransientOpenAIError
from service.metrics import Metrics
from service.openai_client import OpenAIClient
from service.store.protocol import JobStore
from service.store.records import Job
from service.workers import CallBudget, every

log = logging.getLogger("sorahook.reconciler")

LIST_PAGE = 100
# Our job row is written just before the create call, so OpenAI's `created_at` for its video is at most
# a little later, or earlier by clock skew: the list span reaches this far below the oldest job.
CREATED_SLACK = 120.0
# With this few stale videos, retrieving each is no dearer than listing.
LIST_MIN_JOBS = 3
APPLY_CHUNK = 500

NOT_FOUND = {"code": "resource_not_found"}


def take_list_page(
    page: dict[str, Any],
    wanted: dict[str | None, Job],
    learned: list[tuple[str, Observation]],
    oldest: float | None,
) -> str | None:
    """Move the wanted videos one `GET /videos?order=desc` page shows into `learned`.

    Returns the cursor for the next page, or None when paging should stop: no more pages, or this one
    already reaches below `oldest` (the creation time the wanted videos cannot be older than).
    """
    data = [obj for obj in page.get("data") or [] if isinstance(obj, dict)]
    for obj in data:
        job = wanted.pop(str(obj.get("id")), None)
        if job is not None:
            learned.append((job.id, observation_from_resource("video", obj)))
    if not data or not page.get("has_more"):
        return None
    last_created = data[-1].get("created_at")
    if oldest is not None and isinstance(last_created, int | float) and last_created < oldest:
        return None
    return str(page.get("last_id") or data[-1].get("id"))


async def page_videos(
    openai: OpenAIClient,
    wanted: dict[str | None, Job],
    learned: list[tuple[str, Observation]],
    *,
    after: str | None,
    oldest: float | None,
    charge: Callable[[], bool],
) -> bool:
    """Page `GET /videos?order=desc` from `after`, moving the wanted videos the pages show into `learned`.

    Stops once every wanted video was seen, the pages went below `oldest`, or they would cost more calls
    than asking for each by id; a failed list call ends the paging (the rest is asked by id). Each call
    is paid with `charge()`; returns False when it refused one (the budget is spent for now).
    """
    pages = 0
    while wanted and pages < len(wanted):
        if not charge():
            return False
        pages += 1
        try:
            page = await openai.list_videos(after=after, limit=LIST_PAGE, order="desc")
        except OpenAIError as exc:
            log.info("listing videos failed; asking by id", extra={"code": exc.code})
            break
        after = take_list_page(page, wanted, learned, oldest)
        if after is None:
            break
    return True


def _halts(exc: OpenAIError) -> bool:
    """Errors that say "stop asking for now" rather than "this one job is wrong": 429, auth, 5xx, network."""
    return isinstance(exc, TransientOpenAIError) or exc.status in (401, 403, 429)


@dataclass
class PassReport:
    """What one pass did; `outcomes` counts jobs by updated, unchanged, not_found and error."""

    stale: int = 0
    calls: int = 0
    list_calls: int = 0
    expired: int = 0
    paused: bool = False  # skipped: still backing off after an earlier pass was halted
    halted: bool = False  # OpenAI answered 429, 5xx or an auth error: no more calls, then a pause
    rate_limited: bool = False  # among those, a 429
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n


@dataclass(frozen=True)
class PassRecord:
    """A finished pass as an operator sees it: when, how it went, and the report (None if it failed)."""

    started_at: float
    finished_at: float
    report: PassReport | None
    error: str | None = None  # why the pass failed (an unexpected error; the worker runs on)
    paused_until: float | None = None  # set when the pass was skipped or halted: no calls before then

    @property
    def outcome(self) -> str:
        """`checked`, `nothing_stale`, `paused`, `rate_limited`, `halted` or `error`."""
        report = self.report
        if report is None:
            return "error"
        if report.paused:
            return "paused"
        if report.halted:
            return "rate_limited" if report.rate_limited else "halted"
        return "checked" if report.stale else "nothing_stale"


class LastPass:
    """The reconciler's most recent pass: written by the reconciler, read by whoever it is given to."""

    def __init__(self) -> None:
        self.record: PassRecord | None = None


@dataclass
class _Pass:
    """One pass's working state: the call budget, what was learned, which jobs OpenAI no longer knows."""

    budget: int
    report: PassReport
    learned: list[tuple[str, Observation]] = field(default_factory=list)
    not_found: set[str] = field(default_factory=set)
    retry_after: float | None = None
    shared: CallBudget | None = None  # the ceiling shared with the progress poller

    def charge(self) -> bool:
        """Take one call from the budget; False once it is spent or the pass was halted."""
        if self.report.halted or self.budget <= 0 or (self.shared is not None and not self.shared.take()):
            return False
        self.budget -= 1
        self.report.calls += 1
        return True

    def halt(self, exc: OpenAIError) -> None:
        self.report.halted = True
        self.report.rate_limited |= exc.status == 429
        if exc.retry_after is not None:
            self.retry_after = max(self.retry_after or 0.0, exc.retry_after)


class Reconciler:
    name = "reconciler"

    def __init__(
        self,
        *,
        store: JobStore,
        openai: OpenAIClient,
        clock: Clock,
        metrics: Metrics,
        interval: float,
        stale_after: float,
        max_calls: int = 150,
        concurrency: int = 8,
        backoff_cap: float = 900.0,
        use_list: bool = True,
        budget: CallBudget | None = None,
        last_pass: LastPass | None = None,
    ) -> None:
        self.store, self.openai, self.clock, self.metrics = store, openai, clock, metrics
        self.interval, self.stale_after = interval, stale_after
        self.max_calls, self.concurrency, self.backoff_cap = max_calls, concurrency, backoff_cap
        self.use_list = use_list  # off for providers without `GET /videos`, and for the naive bench
        self.shared_budget = budget
        self.paused_until = 0.0
        self._strikes = 0  # passes halted in a row: each pauses about twice as long as the last
        self.last_pass = last_pass if last_pass is not None else LastPass()

    async def run_once(self) -> PassReport:
        """One pass, recorded in `last_pass` however it ends."""
        started = self.clock.now()
        try:
            report = await self._run_pass()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            self.last_pass.record = PassRecord(started, self.clock.now(), None, error=error)
            raise
        paused = self.paused_until if (report.paused or report.halted) else None
        self.last_pass.record = PassRecord(started, self.clock.now(), report, paused_until=paused)
        return report

    async def _run_pass(self) -> PassReport:
        report = PassReport()
        report.expired = len(await self.store.expire_videos())
        now = self.clock.now()
        if now < self.paused_until:
            report.paused = True
            return report
        stale = await self.store.stale_jobs(now - self.stale_after, limit=self.max_calls * LIST_PAGE)
        report.stale = len(stale)
        if stale:
            await self._reconcile(stale, report)
        self.metrics.reconcile_calls.observe(report.calls)
        return report

    async def _reconcile(self, stale: list[Job], report: PassReport) -> None:
        p = _Pass(budget=self.max_calls, report=report, shared=self.shared_budget)
        videos = [j for j in stale if j.kind == "video"]
        others = [j for j in stale if j.kind != "video"]
        # A big video backlog must not starve the other kinds: they keep up to half the budget.
        unlisted = await self._list_videos(videos, p, keep=min(len(others), self.max_calls // 2))
        await self._retrieve_each(unlisted + others, p)
        # In chunks: one transaction for 10,000 jobs would hold the writer (and every webhook) for seconds.
        for first in range(0, len(p.learned), APPLY_CHUNK):
            chunk = p.learned[first : first + APPLY_CHUNK]
            applied = await self.store.reconciled(chunk, base_delay=self.interval, cap=self.backoff_cap)
            for job_id, outcome in applied:
                report.count("not_found" if job_id in p.not_found else outcome)
        for outcome, n in report.outcomes.items():
            self.metrics.reconciliations.labels(outcome=outcome).inc(n)
        if report.halted:
            # Retry-After is a floor; repeated storms push the pause further out, up to the cap.
            self._strikes += 1
            pause = max(
                p.retry_after or 0.0, backoff(self._strikes, base=self.interval, cap=self.backoff_cap)
            )
            self.paused_until = self.clock.now() + pause
            log.warning(
                "OpenAI is refusing the reconciler; pausing",
                extra={"pause": round(pause, 2), "rate_limited": report.rate_limited},
            )
        else:
            self._strikes = 0
        if report.outcomes.get("updated") or report.outcomes.get("not_found"):
            log.info(
                "reconciler caught up missed webhooks",
                extra={"outcomes": dict(report.outcomes), "calls": report.calls},
            )

    async def _list_videos(self, videos: list[Job], p: _Pass, keep: int) -> list[Job]:
        """Page the list over the span that holds the stale videos; return those it did not show.

        The span comes from the jobs sorahook submitted itself (`origin: api`): OpenAI made each video
        just after its job row. The newest is retrieved by id first and its id is the `after` cursor, so
        newer videos are skipped, and a pass cut short by the ceiling leaves the next pass a span that
        starts lower down. Stale videos OpenAI made after the cursor (concurrent submissions) and tracked
        videos made long before are retrieved by id, unless a page shows them anyway. With no submitted
        job to bound the span, pages run from the newest video.
        """
        if not self.use_list or len(videos) < LIST_MIN_JOBS:
            return videos
        wanted = {j.resource_id: j for j in videos}
        submitted = [j for j in videos if j.origin == "api"]
        after: str | None = None
        oldest: float | None = None
        if submitted:
            newest = max(submitted, key=lambda j: (j.created_at, j.id))
            del wanted[newest.resource_id]
            after = newest.resource_id
            oldest = min(j.created_at for j in submitted) - CREATED_SLACK
            await self._retrieve_each([newest], p)
        cursor = after
        pages = 0
        # However sparse our videos are among the account's, listing never costs more calls than
        # asking for each by id would have.
        most = len(wanted)
        while wanted and pages < most and p.budget > keep and p.charge():
            pages += 1
            p.report.list_calls += 1
            try:
                page = await self.openai.list_videos(after=after, limit=LIST_PAGE, order="desc")
            except OpenAIError as exc:
                if _halts(exc):
                    p.halt(exc)
                    if exc.status != 429:
                        p.report.count("error", len(wanted))
                    return list(wanted.values())  # not asked this pass: the halt stops every call
                if after is not None and after == cursor:
                    after = None  # the cursor video is gone at OpenAI: start from the newest instead
                    continue
                log.warning("listing videos failed; retrieving by id", extra={"code": exc.code})
                break
            after = take_list_page(page, wanted, p.learned, oldest)
            if after is None:
                break
        return list(wanted.values())

    async def _retrieve_each(self, jobs: list[Job], p: _Pass) -> None:
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(job: Job) -> None:
            assert job.resource_id is not None
            async with semaphore:
                if not p.charge():
                    return
                try:
                    obj = await self.openai.retrieve(job.kind, job.resource_id)
                except OpenAIError as exc:
                    if _halts(exc):
                        p.halt(exc)
                        if exc.status != 429:
                            p.report.count("error")
                    elif exc.status == 404:
                        error = {**NOT_FOUND, "message": f"OpenAI no longer knows {job.resource_id}"}
                        p.learned.append((job.id, Observation(status="failed", error=error)))
                        p.not_found.add(job.id)
                    else:
                        log.info("reconcile retrieve failed", extra={"job_id": job.id, "code": exc.code})
                        p.report.count("error")
                    return
                p.learned.append((job.id, observation_from_resource(job.kind, obj)))

        await asyncio.gather(*(one(job) for job in jobs))

    async def run(self) -> None:
        """One pass at once (catching up downtime), then one every `interval`."""
        await every(self.name, self.interval, self.run_once)
