"""The reconciler: lost webhooks caught up through the webhook's own path, cheaply and politely.

Two styles: the whole service on a loopback port with the emulator as OpenAI (drop rates, restarts,
429 storms, subscribers), and `Reconciler.run_once()` driven by a `ManualClock` against the emulator
through an in-process transport (backoff, ceilings, list paging, expiry, query plans).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Mount

from service.app import create_app
from service.clock import ManualClock
from service.emulator import Emulator, EmulatorConfig
from service.metrics import Metrics
from service.openai_client import OpenAIClient
from service.reconciler import Reconciler
from service.store.records import Job
from service.store.sqlite import SqliteStore
from service.submitter import Submitter
from tests.subscriber import Subscriber
from tests.support import auth, emulated_service, free_port, live_server, make_settings, wait_until

pytestmark = pytest.mark.anyio

TERMINAL = ("completed", "failed", "cancelled", "expired")


# -- helpers for the live service --------------------------------------------------------------------------


async def _create_jobs(client: httpx.AsyncClient, prompts: list[str]) -> list[str]:
    ids = []
    for prompt in prompts:
        response = await client.post("/v1/jobs", json={"prompt": prompt}, headers=auth())
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


async def _jobs(client: httpx.AsyncClient, ids: list[str]) -> list[dict[str, Any]]:
    jobs = []
    for job_id in ids:
        response = await client.get(f"/v1/jobs/{job_id}", headers=auth())
        assert response.status_code == 200
        jobs.append(dict(response.json()))
    return jobs


async def _wait_all(
    client: httpx.AsyncClient, ids: list[str], *statuses: str, timeout: float = 15
) -> list[Any]:
    async def check() -> list[dict[str, Any]] | None:
        jobs = await _jobs(client, ids)
        return jobs if all(j["status"] in statuses for j in jobs) else None

    return list(await wait_until(check, timeout=timeout))


async def _events(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/jobs/{job_id}/events", headers=auth())
    assert response.status_code == 200
    return list(response.json()["data"])


async def _metric(client: httpx.AsyncClient, sample: str, **labels: str) -> float:
    """One sample from `/metrics` (0 when absent), e.g. `sorahook_reconcile_pass_openai_calls_sum`."""
    text = (await client.get("/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def _passes_go_by(client: httpx.AsyncClient, n: int) -> None:
    """Wait until the reconciler has run `n` more passes."""
    start = await _metric(client, "sorahook_reconcile_pass_openai_calls_count")

    async def done() -> bool:
        return await _metric(client, "sorahook_reconcile_pass_openai_calls_count") >= start + n

    await wait_until(done)


def _reads(emulator: Emulator) -> list[tuple[str, str]]:
    """The calls that read a video's state: list and retrieve (not downloads, not creates)."""
    return [
        c for c in emulator.calls if c[0] == "GET" and c[1].startswith("/v1/videos") and c[1].count("/") <= 3
    ]


# -- the live service ---------------------------------------------------------------------------------------


async def test_with_every_webhook_dropped_jobs_reach_their_true_state_and_subscribers_hear_it(
    tmp_path: Path,
) -> None:
    sub_server = Subscriber()
    async with (
        live_server(sub_server.app()) as sub_url,
        emulated_service(
            tmp_path, emulator_options={"drop_rate": 1.0}, reconcile_after=0.5, reconcile_interval=0.2
        ) as (url, emulator, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        response = await client.post("/v1/subscriptions", json={"url": f"{sub_url}/hook"}, headers=auth())
        sub = response.json()
        prompts = ["a fox", "a heron", "a lynx", "[fail] a storm", "[fail] a flood"]
        ids = await _create_jobs(client, prompts)
        jobs = await _wait_all(client, ids, *TERMINAL)
        assert len(emulator.webhooks_dropped) == len(ids) and emulator.webhooks_sent == []
        for prompt, job in zip(prompts, jobs, strict=True):
            if prompt.startswith("[fail]"):
                assert job["status"] == "failed" and job["error"]["code"] == "video_generation_failed"
            else:
                assert job["status"] == "completed" and job["progress"] == 100
                assert job["result"]["expires_at"] > 0 and job["result"]["size"] == "720x1280"
            timeline = await _events(client, job["id"])
            assert not [e for e in timeline if e["direction"] == "received"]
            [final] = [e for e in timeline if e["type"] == f"video.{job['status']}"]
            assert final["direction"] == "emitted" and final["source"] == "reconcile"

        def finals() -> dict[str, list[dict[str, Any]]]:
            got: dict[str, list[dict[str, Any]]] = {}
            for r in sub_server.on("/hook"):
                if r.event["type"] in ("video.completed", "video.failed"):
                    got.setdefault(r.event["data"]["id"], []).append(r.event)
            return got

        async def all_heard() -> bool:
            return len(finals()) == len(ids)

        await wait_until(all_heard)
        await _passes_go_by(client, 3)  # later passes must not announce anything again
        heard = finals()
        for job in jobs:
            [event] = heard[job["id"]]
            assert event["type"] == f"video.{job['status']}" and event["object"] == "event"
            assert (
                event["data"]["status"] == job["status"]
                and event["data"]["resource_id"] == job["resource_id"]
            )
        for r in sub_server.on("/hook"):
            standardwebhooks.Webhook(sub["secret"]).verify(r.body, r.headers)


async def test_with_no_webhook_dropped_a_run_of_jobs_makes_no_reconciliation_calls(tmp_path: Path) -> None:
    async with (
        emulated_service(tmp_path, reconcile_after=3.0, reconcile_interval=0.1) as (url, emulator, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        ids = await _create_jobs(client, [f"scene {i}" for i in range(8)])

        async def refreshed() -> bool:
            jobs = await _jobs(client, ids)
            return all(j["status"] == "completed" and j["result"] for j in jobs)

        await wait_until(refreshed, timeout=15)
        await _passes_go_by(client, 5)
        assert await _metric(client, "sorahook_reconcile_pass_openai_calls_sum") == 0
        assert await _metric(client, "sorahook_reconciliations_total") == 0
        # The only reads are the other workers' retrieves by id (the refresher's after each webhook).
        assert ("GET", "/v1/videos") not in _reads(emulator)


async def test_jobs_that_finished_while_the_service_was_down_are_caught_up_in_the_first_pass(
    tmp_path: Path,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(tmp_path, openai_base_url=f"{base}/_emulator/v1", emulator=True)
    emulator = Emulator(
        EmulatorConfig(
            webhook_url=f"{base}/webhooks/openai",
            webhook_secret=settings.webhook_secrets[0],
            duration=0.3,
            drop_rate=1.0,
        )
    )

    def app(**overrides: Any) -> Any:
        return create_app(
            replace(settings, **overrides),
            extra_routes=[Mount("/_emulator", app=emulator.app)],
            background=[emulator.run],
        )

    prompts = ["a harbour", "a bridge", "[fail] a glacier", "a meadow"]
    try:
        async with live_server(app(), port=port) as url, httpx.AsyncClient(base_url=url) as client:
            ids = await _create_jobs(client, prompts)
            await _wait_all(client, ids, "queued", "in_progress")

        async def finished_at_openai() -> bool:
            await emulator.run_once()  # the service is down: its webhooks go nowhere (and are dropped)
            return len(emulator.videos) == len(ids) and all(
                v["status"] in ("completed", "failed") for v in emulator.videos.values()
            )

        await wait_until(finished_at_openai)
        # An hour between passes: only the start-up pass can catch these jobs up.
        restarted = app(reconcile_after=0.2, reconcile_interval=3600.0)
        async with live_server(restarted, port=port) as url, httpx.AsyncClient(base_url=url) as client:
            jobs = await _wait_all(client, ids, *TERMINAL)
            assert [j["status"] for j in jobs] == ["completed", "completed", "failed", "completed"]
            assert await _metric(client, "sorahook_reconcile_pass_openai_calls_count") == 1
            assert await _metric(client, "sorahook_reconciliations_total", outcome="updated") == len(ids)
            for job in jobs:
                sources = {
                    e["source"]
                    for e in await _events(client, job["id"])
                    if e["type"] == f"video.{job['status']}"
                }
                assert sources == {"reconcile"}
    finally:
        await emulator.aclose()


@pytest.mark.parametrize("storm", ["injected", "error_rate"])
async def test_a_429_storm_slows_the_reconciler_and_never_stops_it(tmp_path: Path, storm: str) -> None:
    async with (
        emulated_service(
            tmp_path, emulator_options={"drop_rate": 1.0}, reconcile_after=1.0, reconcile_interval=0.05
        ) as (url, emulator, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        ids = await _create_jobs(client, [f"take {i}" for i in range(6)])
        await _wait_all(client, ids, "queued", "in_progress")  # submitted: only the reconciler's reads remain

        async def failed_reads() -> float:
            return sum(
                [
                    await _metric(client, "sorahook_openai_requests_total", status=s)
                    for s in ("429", "500", "503")
                ]
            )

        if storm == "injected":
            emulator.inject_fault(429, count=20, retry_after=0.1)
        else:
            emulator.config = replace(emulator.config, error_rate=1.0)

            async def stormed() -> bool:
                return await failed_reads() >= 12

            await wait_until(stormed)
            assert [j["status"] for j in await _jobs(client, ids)] != ["completed"] * len(ids)
            emulator.config = replace(emulator.config, error_rate=0.3)  # the storm dies down
        jobs = await _wait_all(client, ids, *TERMINAL, timeout=40)
        assert [j["status"] for j in jobs] == ["completed"] * len(ids)
        assert await failed_reads() >= 12
        if storm == "injected":
            assert await _metric(client, "sorahook_openai_requests_total", status="429") == 20
        assert await _metric(client, "sorahook_reconciliations_total", outcome="updated") >= len(ids)
        assert (await client.get("/readyz")).status_code == 200  # the reconciler task is alive


# -- run_once with an injected clock ------------------------------------------------------------------------


@dataclass
class World:
    clock: ManualClock
    emulator: Emulator
    store: SqliteStore
    openai: OpenAIClient
    metrics: Metrics

    def reconciler(self, **options: Any) -> Reconciler:
        settings: dict[str, Any] = {"interval": 10.0, "stale_after": 60.0, **options}
        return Reconciler(
            store=self.store, openai=self.openai, clock=self.clock, metrics=self.metrics, **settings
        )

    async def submit(self, n: int, prompt: str = "a lighthouse") -> list[Job]:
        """Create `n` jobs through the store and send them with the real submitter."""
        jobs = [
            (
                await self.store.create_job(
                    request={"prompt": f"{prompt} {i}"},
                    callback_url=None,
                    metadata={},
                    idempotency_key=None,
                )
            )[0]
            for i in range(n)
        ]
        # One at a time, so OpenAI makes the videos in job order (as the list pages assume).
        submitter = Submitter(store=self.store, openai=self.openai, clock=self.clock, batch=1)
        while await submitter.run_once():
            pass
        return [j for j in [await self.store.get_job(job.id) for job in jobs] if j is not None]

    async def statuses(self, jobs: list[Job]) -> list[str]:
        found = [await self.store.get_job(j.id) for j in jobs]
        return [j.status if j else "missing" for j in found]

    def reads(self) -> list[tuple[str, str]]:
        return _reads(self.emulator)


@asynccontextmanager
async def world(tmp_path: Path, **emulator: Any) -> AsyncIterator[World]:
    clock = ManualClock()
    emu = Emulator(EmulatorConfig(**{"duration": 1000.0, **emulator}), clock=clock)
    metrics = Metrics()
    store = await SqliteStore.open(tmp_path / "reconcile.db", clock=clock)
    # No retries inside the client: the reconciler's own pause is what honours Retry-After here.
    openai = OpenAIClient(
        base_url="http://emulator/v1",
        api_key=None,
        metrics=metrics,
        transport=httpx.ASGITransport(app=emu.app),
        max_retries=0,
    )
    try:
        yield World(clock, emu, store, openai, metrics)
    finally:
        await openai.aclose()
        await store.aclose()
        await emu.aclose()


async def test_nothing_stale_means_no_openai_calls(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.submit(5)
        reconciler = w.reconciler()
        w.clock.advance(59)
        report = await reconciler.run_once()
        assert report.stale == 0 and report.calls == 0 and w.reads() == []


async def test_an_unchanged_job_is_asked_less_and_less_often_up_to_the_cap(tmp_path: Path) -> None:
    async with world(tmp_path, duration=100_000.0) as w:  # queued for 10,000 s: every answer is the same
        [job] = await w.submit(1)
        reconciler = w.reconciler(interval=10.0, stale_after=60.0, backoff_cap=320.0)
        start = w.clock.now()
        asked: list[float] = []
        for _ in range(1000):  # 5,000 s in steps of 5 s
            w.clock.advance(5)
            before = len(w.reads())
            report = await reconciler.run_once()
            if len(w.reads()) > before:
                asked.append(w.clock.now() - start)
                assert report.outcomes == {"unchanged": 1}
        assert (await w.statuses([job])) == ["queued"]
        gaps = [b - a for a, b in itertools.pairwise(asked)]
        assert asked[0] == 60  # first asked once stale
        assert gaps[:6] == [10, 20, 40, 80, 160, 320]  # doubling from the interval...
        assert set(gaps[6:]) == {320}  # ...up to the cap
        assert len(asked) < 25  # at a fixed 10 s interval it would have been ~490 calls


async def test_a_429_pauses_every_call_until_retry_after_has_passed(tmp_path: Path) -> None:
    async with world(tmp_path, duration=30.0) as w:
        jobs = await w.submit(5)
        reconciler = w.reconciler()
        w.clock.advance(100)
        w.emulator.inject_fault(429, count=1, retry_after=120)
        report = await reconciler.run_once()
        assert report.rate_limited and report.calls == 1 and "updated" not in report.outcomes
        calls = len(w.reads())
        for _ in range(11):
            w.clock.advance(10)
            report = await reconciler.run_once()
            assert report.paused and report.calls == 0
        assert len(w.reads()) == calls
        w.clock.advance(11)
        report = await reconciler.run_once()
        assert report.outcomes == {"updated": 5} and not report.rate_limited
        assert await w.statuses(jobs) == ["completed"] * 5


async def test_one_pass_lists_a_hundred_jobs_per_call_over_just_their_span(tmp_path: Path) -> None:
    async with world(tmp_path, duration=30.0) as w:
        old = await w.openai.create_video(
            prompt="tracked", model="sora-2", seconds=None, size=None, idempotency_key=None
        )
        w.clock.advance(1)
        for _ in range(300):  # older videos that are not ours
            await w.openai.create_video(
                prompt="theirs", model="sora-2", seconds=None, size=None, idempotency_key=None
            )
        w.clock.advance(1000)
        jobs = await w.submit(250, "ours")
        tracked, _ = await w.store.track_job(
            kind="video", resource_id=old["id"], callback_url=None, metadata={}
        )
        w.clock.advance(1)
        for _ in range(300):  # newer videos that are not ours
            await w.openai.create_video(
                prompt="theirs", model="sora-2", seconds=None, size=None, idempotency_key=None
            )
        w.clock.advance(100)
        before = len(w.reads())
        report = await w.reconciler().run_once()
        assert report.stale == 251 and report.outcomes == {"updated": 251}
        # 3 pages for 249 of ours (not one of the 600 others), the span's first video and the tracked one.
        assert report.list_calls == 3 and report.calls == 5 and len(w.reads()) - before == 5
        assert await w.statuses([*jobs, tracked]) == ["completed"] * 251
        for job in jobs[:3]:
            events = await w.store.job_events(job.id)
            assert [(e.type, e.source) for e in events if e.type == "video.completed"] == [
                ("video.completed", "reconcile")
            ]


async def test_a_pass_never_makes_more_calls_than_its_ceiling(tmp_path: Path) -> None:
    async with world(tmp_path, duration=30.0) as w:
        jobs = await w.submit(12)
        w.clock.advance(100)
        one_by_one = w.reconciler(max_calls=5, use_list=False)
        reports = [await one_by_one.run_once() for _ in range(3)]
        assert [r.calls for r in reports] == [5, 5, 2]
        assert [r.outcomes for r in reports] == [{"updated": 5}, {"updated": 5}, {"updated": 2}]
        assert await w.statuses(jobs) == ["completed"] * 12

        more = await w.submit(450)
        w.clock.advance(100)
        listing = w.reconciler(max_calls=2)
        # Each pass: the newest stale video by id (the cursor), then one page of up to 100 below it.
        reports = [await listing.run_once() for _ in range(6)]
        assert all(r.calls <= 2 for r in reports) and reports[-1].stale == 0
        assert sum(r.outcomes.get("updated", 0) for r in reports) == 450
        assert await w.statuses(more) == ["completed"] * 450


async def test_a_video_openai_no_longer_knows_fails_with_resource_not_found(tmp_path: Path) -> None:
    async with world(tmp_path, duration=30.0) as w:
        jobs = await w.submit(4)
        gone = jobs[1]
        assert gone.resource_id is not None
        await w.openai.delete_video(gone.resource_id)
        w.clock.advance(100)
        report = await w.reconciler().run_once()
        assert report.outcomes == {"updated": 3, "not_found": 1}
        job = await w.store.get_job(gone.id)
        assert job is not None and job.status == "failed"
        assert job.error is not None and job.error["code"] == "resource_not_found"
        events = await w.store.job_events(gone.id)
        assert [(e.type, e.source) for e in events if e.type == "video.failed"] == [
            ("video.failed", "reconcile")
        ]
        sample = w.metrics.registry.get_sample_value
        assert sample("sorahook_reconciliations_total", {"outcome": "not_found"}) == 1
        assert sample("sorahook_reconciliations_total", {"outcome": "updated"}) == 3


async def test_a_completed_video_whose_assets_expired_is_announced_once(tmp_path: Path) -> None:
    async with world(tmp_path, duration=30.0, asset_ttl=600.0) as w:
        sub = await w.store.create_subscription(
            url="http://subscriber.test/hook",
            event_types=["video.*"],
            description=None,
            secret="whsec_x",
            ordered=False,
        )
        [job] = await w.submit(1)
        reconciler = w.reconciler()
        w.clock.advance(100)
        report = await reconciler.run_once()
        assert report.outcomes == {"updated": 1} and report.expired == 0
        done = await w.store.get_job(job.id)
        assert done is not None and done.status == "completed" and done.result is not None
        assert w.clock.now() < done.result["expires_at"] and "expired" not in done.result
        w.clock.advance(600)
        calls = len(w.reads())
        report = await reconciler.run_once()
        assert report.expired == 1 and report.calls == 0 and len(w.reads()) == calls  # no OpenAI call
        for _ in range(3):
            w.clock.advance(10)
            assert (await reconciler.run_once()).expired == 0
        expired = await w.store.get_job(job.id)
        assert expired is not None and expired.status == "completed"
        assert expired.result is not None and expired.result["expired"] is True
        assert expired.result["expires_at"] == done.result["expires_at"]
        events = await w.store.job_events(job.id)
        assert [(e.type, e.source) for e in events if e.type == "video.expired"] == [
            ("video.expired", "reconcile")
        ]
        deliveries, _ = await w.store.list_deliveries(
            subscription_id=sub.id, job_id=job.id, status=None, limit=10, after=None
        )
        assert sorted(d.event_type for d in deliveries) == [
            "video.completed",
            "video.expired",
            "video.queued",
        ]


async def test_the_per_pass_queries_seek_their_partial_indexes(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        plans = await w.store.reconcile_query_plans()
        stale = " | ".join(plans["stale_jobs"])
        assert stale.count("SEARCH jobs USING INDEX jobs_stale") == 2 and "SCAN" not in stale
        assert plans["expire_videos"] == ["SEARCH jobs USING INDEX jobs_expiry (<expr><?)"]


async def test_openai_failing_halts_the_pass_and_the_loop_goes_on(tmp_path: Path) -> None:
    async with world(tmp_path, duration=30.0) as w:
        await w.submit(3)
        w.clock.advance(100)
        reconciler = w.reconciler(interval=0.01)
        w.emulator.inject_fault(500, count=3)
        task = asyncio.create_task(reconciler.run())

        async def all_done() -> bool:
            w.clock.advance(1)  # past each pause
            return await w.store.stale_jobs(w.clock.now(), limit=10) == []

        await wait_until(all_done)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sample = w.metrics.registry.get_sample_value
        # Each 500 halted its pass after one call: three errors, not one per job per pass.
        assert sample("sorahook_reconciliations_total", {"outcome": "error"}) == 3
        assert sample("sorahook_openai_requests_total", {"operation": "retrieve_video", "status": "500"}) == 3


async def test_each_pass_is_recorded_in_last_pass_however_it_ends(tmp_path: Path) -> None:
    from service.reconciler import LastPass

    async with world(tmp_path, duration=30.0) as w:
        await w.submit(3)
        last_pass = LastPass()
        reconciler = w.reconciler(last_pass=last_pass)
        w.clock.advance(100)
        w.emulator.inject_fault(429, count=1, retry_after=120)
        report = await reconciler.run_once()
        record = last_pass.record
        assert record is not None and record.report is report and record.outcome == "rate_limited"
        assert record.finished_at == w.clock.now() and record.paused_until == reconciler.paused_until
        w.clock.advance(10)
        await reconciler.run_once()
        assert (
            last_pass.record.outcome == "paused" and last_pass.record.paused_until == reconciler.paused_until
        )
        w.clock.advance(200)
        await reconciler.run_once()
        assert last_pass.record.outcome == "checked" and last_pass.record.report.outcomes == {"updated": 3}
        assert last_pass.record.paused_until is None
        await reconciler.run_once()
        assert last_pass.record.outcome == "nothing_stale"
        await w.store.aclose()  # the next pass fails: recorded, and raised for the worker loop to log
        with pytest.raises(Exception) as failed:
            await reconciler.run_once()
        assert last_pass.record.outcome == "error" and last_pass.record.report is None
        assert last_pass.record.error is not None and type(failed.value).__name__ in last_pass.record.error
