"""Retention prunes old history in small batches, keeps jobs, and never drops what still waits to be sent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.clock import ManualClock
from service.retention import Pruner
from service.store.sqlite import DeliveryOutcome, SqliteStore
from tests.support import incoming_webhook

pytestmark = pytest.mark.anyio


async def test_old_history_goes_jobs_stay_and_pending_deliveries_are_kept(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await SqliteStore.open(tmp_path / "r.db", clock=clock, retry_schedule=(0.0, 60.0))
    try:
        await store.create_subscription(
            url="http://127.0.0.1:9/x", event_types=None, description=None, secret="whsec_AAAA", ordered=False
        )
        for i in range(30):
            await store.record_webhook(incoming_webhook(i, clock.now()))
        # Deliver all but the last five; those stay pending.
        claimed = await store.claim_deliveries(100, 30.0)
        done = claimed[:25]
        await store.record_attempts([DeliveryOutcome(c.id, 200, None, 0.01) for c in done])
        await store.release_deliveries([c.id for c in claimed[25:]])
        clock.advance(31 * 86400)
        removed = await Pruner(store=store, clock=clock, keep=30 * 86400, batch=7).run_once()
        assert removed > 0
        jobs, _ = await store.list_jobs(status=None, kind=None, limit=100, after=None)
        assert len(jobs) == 30
        pending = await store.delivery_backlog()
        assert pending == 5
        remaining_events = 0
        for job in jobs:
            remaining_events += len(await store.job_events(job.id))
        assert remaining_events == 5  # the emitted events whose deliveries still wait
        assert await store.count_received() == 0
        assert await Pruner(store=store, clock=clock, keep=30 * 86400).run_once() == 0
    finally:
        await store.aclose()


async def test_every_prune_query_seeks_an_index_and_scans_no_table(tmp_path: Path) -> None:
    """A scan here once cost a full pass over deliveries per old event: minutes holding the writer."""
    store = await SqliteStore.open(tmp_path / "p.db", clock=ManualClock(), retry_schedule=(0.0,))
    await store.aclose()
    conn = sqlite3.connect(tmp_path / "p.db")
    try:
        for sql in (
            SqliteStore.PRUNE_DELIVERIES_SQL,
            SqliteStore.PRUNE_RECEIVED_SQL,
            SqliteStore.PRUNE_EMITTED_SQL,
        ):
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, (0.0, 10))]
            assert plan and all(not step.startswith("SCAN") for step in plan), (sql, plan)
            assert any("USING INDEX" in step for step in plan), plan
    finally:
        conn.close()


async def test_dedupe_rows_go_with_their_received_events_and_a_replay_after_that_is_new(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    store = await SqliteStore.open(tmp_path / "d.db", clock=clock, retry_schedule=(0.0,))
    try:
        old = incoming_webhook(1, clock.now())
        await store.record_webhook(old)
        clock.advance(10 * 86400)
        young = incoming_webhook(2, clock.now())
        await store.record_webhook(young)
        assert await store.count_received() == 2
        await Pruner(store=store, clock=clock, keep=5 * 86400).run_once()
        assert await store.count_received() == 1
        assert (await store.record_webhook(young)).status == "duplicate"  # the young one still dedupes
    finally:
        await store.aclose()
