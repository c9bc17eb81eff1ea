"""The submitter: sends `pending` jobs to OpenAI, once each, surviving restarts (idempotency key = job id)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.clock import Clock
from service.domain import Observation, error_category, job_error, observation_from_resource
from service.domain.retry import backoff
from service.errors import OpenAIError, PermanentOpenAIError, TransientOpenAIError
from service.openai_client import OpenAIClient
from service.reconciler import CREATED_SLACK, page_videos
from service.store.protocol import Store
from service.store.records import Job
from service.workers import CallBudget, idle_until, loop_forever

log = logging.getLogger("sorahook.submitter")

# Fewer due refreshes than this are fetched by id: each answer is fresh at once, a pass costs at most this
# many calls, and the pages (1 + n/100 calls at best) would save little while risking a sparse span that
# pays for pages and still fetches by id. From here on, listing saves most of the calls.
REFRESH_LIST_MIN = 20


class Submitter:
    name = "submitter"

    def __init__(
        self,
        *,
        store: Store,
        openai: OpenAIClient,
        clock: Clock,
        batch: int = 16,
        lease: float = 300.0,
        max_attempts: int = 10,
        backoff_base: float = 2.0,
        backoff_cap: float = 300.0,
        idle_wait: float = 5.0,
        moderation: bool = False,
    ) -> None:
        self.store, self.openai, self.clock = store, openai, clock
        self.moderation = moderation  # ask POST /moderations first; a flagged prompt never reaches /videos
        self.batch, self.lease, self.max_attempts = batch, lease, max_attempts
        self.backoff_base, self.backoff_cap, self.idle_wait = backoff_base, backoff_cap, idle_wait

    async def run_once(self) -> int:
        jobs = await self.store.claim_submissions(self.batch, self.lease)
        if jobs:
            await asyncio.gather(*(self.submit(job) for job in jobs))
        return len(jobs)

    async def submit(self, job: Job) -> None:
        req = job.request or {}
        try:
            if self.moderation and job.kind == "video":
                flagged = flagged_categories(await self.openai.moderate(str(req.get("prompt", ""))))
                if flagged is not None:
                    log.info("moderation flagged the prompt", extra={"job_id": job.id, "categories": flagged})
                    error = job_error(
                        "moderation_flagged",
                        "OpenAI's moderation flagged the prompt: " + (", ".join(flagged) or "flagged"),
                        categories=flagged,
                    )
                    await self.store.apply_observation(
                        job.id, Observation(status="failed", error=error), "submitter"
                    )
                    return
            video = await self.openai.create_video(
                prompt=str(req.get("prompt", "")),
                model=str(req.get("model", "sora-2")),
                seconds=req.get("seconds"),
                size=req.get("size"),
                idempotency_key=job.id,
            )
        except PermanentOpenAIError as exc:
            log.info("OpenAI refused the job", extra={"job_id": job.id, "code": exc.code})
            await self.store.apply_observation(
                job.id, Observation(status="failed", error=exc.as_job_error()), "submitter"
            )
            return
        except OpenAIError as exc:
            if job.submit_attempts >= self.max_attempts:
                error = job_error(
                    "submission_failed",
                    f"OpenAI kept failing: {exc.message}",
                    category=error_category(exc.status, exc.code),
                )
                await self.store.apply_observation(
                    job.id, Observation(status="failed", error=error), "submitter"
                )
                return
            delay = backoff(job.submit_attempts, base=self.backoff_base, cap=self.backoff_cap)
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            log.info("submission will be retried", extra={"job_id": job.id, "delay": round(delay, 2)})
            await self.store.submission_retry(job.id, self.clock.now() + delay)
            return
        obs = observation_from_resource("video", video)
        if obs.status is None:
            obs = Observation(status="queued", resource_id=obs.resource_id, progress=obs.progress)
        updated = await self.store.submission_succeeded(job.id, obs)
        if updated is not None and updated.status == "cancelled" and obs.resource_id:
            # Cancelled while the create was in flight: do not leave the video running at OpenAI.
            try:
                await self.openai.delete_video(obs.resource_id)
            except OpenAIError:
                log.warning("could not delete a video cancelled during submission", extra={"job_id": job.id})

    async def _step(self) -> None:
        claimed = await self.run_once()
        if claimed:
            return
        next_at = await self.store.next_submission_at()
        await idle_until(self.store.signals.submissions, next_at, self.clock.now(), self.idle_wait)

    async def run(self) -> None:
        await loop_forever(self.name, self._step)


def flagged_categories(verdict: dict[str, Any]) -> list[str] | None:
    """The flagged category names of a moderation answer, or None when nothing was flagged.

    An answer without results is an error (retried like a 5xx), so a prompt is never sent unchecked.
    """
    results = verdict.get("results")
    if not isinstance(results, list) or not results or not all(isinstance(r, dict) for r in results):
        raise TransientOpenAIError("the moderation answer holds no results", code="invalid_response")
    if not any(r.get("flagged") is True for r in results):
        return None
    names: list[str] = []
    for result in results:
        categories = result.get("categories") if result.get("flagged") is True else None
        if isinstance(categories, dict):
            names.extend(name for name, hit in categories.items() if hit is True and name not in names)
    return names


class Refresher:
    """After a terminal webhook (or a track), fetch the full object from OpenAI to fill in the job.

    A few due refreshes (fewer than `REFRESH_LIST_MIN`) are fetched one by one at once. When more are
    due, the videos among them are taken from `GET /videos` list pages (100 videos a call) the way the
    reconciler pages, each call drawn from the call budget shared with the reconciler and the progress
    poller (half of it left to them); after such a pass the refresher waits `gather` seconds, so the
    next pass finds a full page's worth due. Refreshes the budget cannot pay for now wait for its next
    window (the job's status already follows its webhook; only the fill-in waits). Videos the pages did
    not show (deleted, or made long before) are fetched by id.
    """

    name = "refresher"

    def __init__(
        self,
        *,
        store: Store,
        openai: OpenAIClient,
        clock: Clock,
        budget: CallBudget | None = None,
        batch: int = 1000,
        concurrency: int = 16,
        gather: float = 0.5,
        lease: float = 120.0,
        max_attempts: int = 8,
        idle_wait: float = 5.0,
    ) -> None:
        self.store, self.openai, self.clock, self.budget = store, openai, clock, budget
        self.batch, self.concurrency, self.gather = batch, concurrency, gather
        self.lease, self.max_attempts, self.idle_wait = lease, max_attempts, idle_wait

    async def run_once(self) -> int:
        """One pass over the due refreshes; returns how many were claimed."""
        jobs = await self.store.claim_refreshes(self.batch, self.lease)
        videos = [j for j in jobs if j.kind == "video"]
        one_by_one = [j for j in jobs if j.kind != "video"]
        if self.budget is not None and len(videos) >= REFRESH_LIST_MIN:
            one_by_one += await self._from_list_pages(videos, self.budget)
        else:
            one_by_one += videos
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(job: Job) -> None:
            async with semaphore:
                await self.refresh(job)

        await asyncio.gather(*(one(job) for job in one_by_one))
        return len(jobs)

    async def _from_list_pages(self, videos: list[Job], budget: CallBudget) -> list[Job]:
        """Refresh what the list pages show; return the videos left to fetch by id.

        The newest due video is fetched by id and its id is the `after` cursor, so the pages start just
        below it and go older; paging stops once every due video was seen, the pages went older than the
        oldest submitted job, or they would cost more calls than fetching each by id.
        """

        def charge() -> bool:
            return budget.take(reserve=budget.limit // 2)

        wanted = {j.resource_id: j for j in videos}
        newest = max(videos, key=lambda j: (j.created_at, j.id))
        if not charge():
            await self.store.defer_refreshes([j.id for j in videos], budget.resets_at())
            return []
        del wanted[newest.resource_id]
        await self.refresh(newest)
        submitted = [j.created_at for j in videos if j.origin == "api"]
        oldest = min(submitted) - CREATED_SLACK if submitted else None
        learned: list[tuple[str, Observation]] = []
        paid = await page_videos(
            self.openai, wanted, learned, after=newest.resource_id, oldest=oldest, charge=charge
        )
        if not paid:
            await self.store.defer_refreshes([j.id for j in wanted.values()], budget.resets_at())
            wanted.clear()
        await asyncio.gather(*(self.store.refresh_done(job_id, obs) for job_id, obs in learned))
        return list(wanted.values())

    async def refresh(self, job: Job) -> None:
        assert job.resource_id is not None
        try:
            obj = await self.openai.retrieve(job.kind, job.resource_id)
        except PermanentOpenAIError as exc:
            if exc.status == 404:
                error = job_error("resource_not_found", f"OpenAI does not know {job.resource_id}")
                await self.store.refresh_done(job.id, Observation(status="failed", error=error))
            else:
                log.warning("refresh refused", extra={"job_id": job.id, "code": exc.code})
                await self.store.refresh_done(job.id, None)
            return
        except OpenAIError:
            await self.store.refresh_retry(job.id, backoff(3, base=1.0, cap=120.0), self.max_attempts)
            return
        await self.store.refresh_done(job.id, observation_from_resource(job.kind, obj))

    async def _step(self) -> None:
        claimed = await self.run_once()
        if claimed >= REFRESH_LIST_MIN and self.budget is not None:
            await asyncio.sleep(self.gather)  # busy: let due refreshes gather into full list pages
            return
        if claimed:
            return
        next_at = await self.store.next_refresh_at()
        await idle_until(self.store.signals.refreshes, next_at, self.clock.now(), self.idle_wait)

    async def run(self) -> None:
        await loop_forever(self.name, self._step)
