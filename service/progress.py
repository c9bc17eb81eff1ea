"""The progress poller (opt-in): asks OpenAI about unfinished videos and emits `video.progress` events.

Every `interval` it takes the submitted videos that have not finished, learns their objects from OpenAI
(the list endpoint when there are several, so one call covers up to 100; by id for the rest), and hands
what it learned to the store's shared path. The store emits `video.progress` (data: the job object) for a
job whose progress moved at least `step` points since its last progress event; the event is not a state
change, so the job's `sequence` stays. Every call is taken from the `CallBudget` it shares with the
reconciler, keeping half of it for the reconciler, so both together stay under one ceiling.
"""

from __future__ import annotations

import asyncio
import logging

from service.clock import Clock
from service.domain import Observation, observation_from_resource
from service.errors import OpenAIError
from service.openai_client import OpenAIClient
from service.reconciler import CREATED_SLACK, page_videos
from service.store.protocol import JobStore
from service.store.records import Job
from service.workers import CallBudget, every

log = logging.getLogger("sorahook.progress")

LIST_MIN_JOBS = 2  # with fewer, asking by id costs no more than listing


class ProgressPoller:
    name = "progress"

    def __init__(
        self,
        *,
        store: JobStore,
        openai: OpenAIClient,
        clock: Clock,
        budget: CallBudget,
        interval: float,
        step: int = 25,
        concurrency: int = 8,
        max_jobs: int = 1000,
    ) -> None:
        self.store, self.openai, self.clock, self.budget = store, openai, clock, budget
        self.interval, self.step, self.concurrency, self.max_jobs = interval, step, concurrency, max_jobs

    def _charge(self) -> bool:
        return self.budget.take(reserve=self.budget.limit // 2)

    async def run_once(self) -> list[Job]:
        """One poll; returns the jobs that got a `video.progress` event."""
        jobs = await self.store.progress_candidates(self.max_jobs)
        if not jobs:
            return []
        learned: list[tuple[str, Observation]] = []
        rest = await self._list(jobs, learned) if len(jobs) >= LIST_MIN_JOBS else jobs
        await self._retrieve_each(rest, learned)
        if not learned:
            return []
        return await self.store.record_progress(learned, self.step)

    async def _list(self, jobs: list[Job], learned: list[tuple[str, Observation]]) -> list[Job]:
        """Page `GET /videos` newest first until every job was seen or the pages went older than the oldest."""
        wanted: dict[str | None, Job] = {j.resource_id: j for j in jobs}
        oldest = min(j.created_at for j in jobs) - CREATED_SLACK
        await page_videos(self.openai, wanted, learned, after=None, oldest=oldest, charge=self._charge)
        return list(wanted.values())

    async def _retrieve_each(self, jobs: list[Job], learned: list[tuple[str, Observation]]) -> None:
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(job: Job) -> None:
            assert job.resource_id is not None
            async with semaphore:
                if not self._charge():
                    return
                try:
                    obj = await self.openai.retrieve_video(job.resource_id)
                except OpenAIError as exc:
                    log.info("progress retrieve failed", extra={"job_id": job.id, "code": exc.code})
                    return
                learned.append((job.id, observation_from_resource("video", obj)))

        await asyncio.gather(*(one(job) for job in jobs))

    async def run(self) -> None:
        await every(self.name, self.interval, self.run_once)
