"""The refresher fills in jobs after their webhooks: a few by id, many from `GET /videos` list pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.clock import ManualClock
from service.emulator import Emulator, EmulatorConfig
from service.metrics import Metrics
from service.openai_client import OpenAIClient
from service.store.records import Job
from service.store.sqlite import SqliteStore
from service.submitter import Refresher
from service.workers import CallBudget

pytestmark = pytest.mark.anyio


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = ManualClock()
        self.emulator = Emulator(EmulatorConfig(duration=1.0), clock=self.clock)
        self.transport = httpx.ASGITransport(app=self.emulator.app)
        self.openai = OpenAIClient(
            base_url="http://emulator/v1", metrics=Metrics(), transport=self.transport, max_retries=0
        )
        self.path = tmp_path / "db.sqlite"
        self.store: SqliteStore

    def refresher(self, budget: CallBudget) -> Refresher:
        return Refresher(store=self.store, openai=self.openai, clock=self.clock, budget=budget)

    async def due_jobs(self, n: int) -> list[Job]:
        """`n` completed videos at the emulator, each tracked (so due for a refresh), in creation order."""
        async with httpx.AsyncClient(transport=self.transport, base_url="http://emulator") as client:
            ids = [
                (await client.post("/v1/videos", json={"prompt": f"take {i}"})).json()["id"] for i in range(n)
            ]
        self.clock.advance(5.0)  # past the duration: every video is completed
        jobs = []
        for video_id in ids:
            job, _ = await self.store.track_job(
                kind="video", resource_id=video_id, callback_url=None, metadata={}
            )
            jobs.append(job)
            self.clock.advance(0.001)
        self.emulator.calls.clear()
        return jobs


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    made = Rig(tmp_path)
    made.store = await SqliteStore.open(made.path, clock=made.clock)
    try:
        yield made
    finally:
        await made.store.aclose()
        await made.openai.aclose()


async def _completed(store: SqliteStore, jobs: list[Job]) -> list[str]:
    return [j.status for j in [await store.get_job(job.id) for job in jobs] if j is not None]


async def test_many_due_refreshes_are_taken_from_list_pages(rig: Rig) -> None:
    jobs = await rig.due_jobs(150)
    budget = CallBudget(100, 60.0, rig.clock.now)
    assert await rig.refresher(budget).run_once() == 150
    # The newest by id, then two pages of 100 going older: 3 calls for 150 refreshes, not 150.
    newest = ("GET", f"/v1/videos/{jobs[-1].resource_id}")
    assert rig.emulator.calls == [newest, ("GET", "/v1/videos"), ("GET", "/v1/videos")]
    assert budget.used == 3
    assert await _completed(rig.store, jobs) == ["completed"] * 150
    assert await rig.store.next_refresh_at() is None


async def test_a_few_due_refreshes_are_fetched_by_id(rig: Rig) -> None:
    jobs = await rig.due_jobs(2)
    assert await rig.refresher(CallBudget(100, 60.0, rig.clock.now)).run_once() == 2
    assert sorted(rig.emulator.calls) == sorted(("GET", f"/v1/videos/{j.resource_id}") for j in jobs)
    assert await _completed(rig.store, jobs) == ["completed"] * 2


async def test_refreshes_the_shared_budget_cannot_pay_for_wait_for_its_next_window(rig: Rig) -> None:
    jobs = await rig.due_jobs(20)
    budget = CallBudget(4, 60.0, rig.clock.now)
    assert budget.take() and budget.take()  # the reconciler spent half; the refresher keeps out of the rest
    refresher = rig.refresher(budget)
    assert await refresher.run_once() == 20
    assert rig.emulator.calls == [], "no single GETs around the budget"
    assert await refresher.run_once() == 0, "deferred, not due again before the window ends"
    assert "completed" not in await _completed(rig.store, jobs)
    rig.clock.advance(60.0)
    assert await refresher.run_once() == 20
    assert len(rig.emulator.calls) == 2  # the newest by id, then one page
    assert await _completed(rig.store, jobs) == ["completed"] * 20
