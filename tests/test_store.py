"""The store's group-commit writer: a batch commits together, and one failing operation in it undoes only
itself (the batch first runs under one savepoint, then again with one per operation); and the WAL is
checkpointed beside the writer without growing for ever."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from service.clock import ManualClock
from service.domain import Observation
from service.store.sqlite import SqliteStore
from tests.support import incoming_webhook

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


async def test_a_failing_operation_undoes_only_itself(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await SqliteStore.open(tmp_path / "s.db", clock=clock)
    finished: list[tuple[str, str]] = []
    store.on_job_finished = lambda kind, status, seconds: finished.append((kind, status))
    try:

        def failing(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO jobs (id, kind, status, origin, created_at, updated_at) VALUES"
                " ('job_doomed', 'video', 'queued', 'api', 0, 0)"
            )
            raise Boom("after a write")

        commits = store.commits
        hooks = [store.record_webhook(incoming_webhook(i, clock.now())) for i in range(20)]
        outcomes = await asyncio.gather(
            *hooks[:10], store._write(failing), *hooks[10:], return_exceptions=True
        )
        assert isinstance(outcomes[10], Boom)
        assert [o.status for o in outcomes if not isinstance(o, BaseException)] == ["accepted"] * 20
        assert store.commits - commits <= 2  # grouped, not one commit per write
        jobs, _ = await store.list_jobs(status=None, kind=None, limit=100, after=None)
        assert sorted(j.resource_id or "" for j in jobs) == sorted(f"video_{i}" for i in range(20))
        assert all(j.status == "completed" for j in jobs)
        assert finished == [("video", "completed")] * 20  # counted once each, though the batch ran twice
        assert await store.count_received() == 20
        # A repeat is still a duplicate: the dedupe rows of the batch were committed once.
        assert (await store.record_webhook(incoming_webhook(3, clock.now()))).status == "duplicate"
    finally:
        await store.aclose()


async def test_the_writer_leaves_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await SqliteStore.open(tmp_path / "c.db", clock=clock)
    try:
        for i in range(50):
            await store.record_webhook(incoming_webhook(i, clock.now()))
        wal = tmp_path / "c.db-wal"
        assert wal.stat().st_size > 0  # commits stay in the WAL until a checkpoint copies them
        log_frames, copied = await store.checkpoint()
        assert log_frames > 0 and copied == log_frames
        # The next write starts the WAL over instead of growing it.
        size = wal.stat().st_size
        await store.record_webhook(incoming_webhook(999, clock.now()))
        assert wal.stat().st_size == size
        assert (await store.checkpoint())[0] < log_frames
    finally:
        await store.aclose()
    reopened = sqlite3.connect(tmp_path / "c.db")
    assert reopened.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 51
    reopened.close()


async def test_a_long_wal_is_caught_up_by_the_writer_and_starts_over(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await SqliteStore.open(tmp_path / "w.db", clock=clock)
    store.wal_catch_up_frames = 1
    try:
        wal = tmp_path / "w.db-wal"
        for i in range(20):
            await store.record_webhook(incoming_webhook(i, clock.now()))
        await store.checkpoint()  # past the limit: the writer copies what is left after its next batch
        await store.record_webhook(incoming_webhook(20, clock.now()))
        size = wal.stat().st_size
        for i in range(21, 40):
            await store.record_webhook(incoming_webhook(i, clock.now()))
        # Without a catch-up the WAL could only grow; with it, writing starts over at its beginning.
        assert wal.stat().st_size <= size
        jobs, _ = await store.list_jobs(status=None, kind=None, limit=100, after=None)
        assert len(jobs) == 40
    finally:
        await store.aclose()


def _counted(path: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(
            conn.execute("SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status").fetchall()
        )
    finally:
        conn.close()


async def test_job_counts_follow_every_insert_and_status_change(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await SqliteStore.open(tmp_path / "c.db", clock=clock, retry_schedule=(0.0,))
    try:
        for i in range(3):  # untracked: three completed webhook jobs
            await store.record_webhook(incoming_webhook(i, clock.now()))
        tracked = []
        for i in range(10, 14):
            job, _ = await store.track_job(
                kind="video", resource_id=f"video_{i}", callback_url=None, metadata={}
            )
            tracked.append(job)
        await store.track_job(kind="batch", resource_id="batch_1", callback_url=None, metadata={})
        await store.record_webhook(incoming_webhook(10, clock.now()))  # queued -> completed
        await store.record_webhook(incoming_webhook(10, clock.now()))  # a duplicate moves nothing
        await store.refresh_done(tracked[1].id, Observation(status="in_progress", progress=40))
        await store.refresh_done(
            tracked[2].id, Observation(status="failed", error={"code": "x", "message": "y"})
        )
        await store.refresh_done(tracked[2].id, Observation(status="in_progress"))  # terminal stays terminal
        counts = sorted(await store.job_counts())
    finally:
        await store.aclose()
    assert counts == _counted(tmp_path / "c.db")
    assert ("video", "completed", 4) in counts and ("batch", tracked[0].status, 1) in counts


async def test_the_counts_migration_counts_the_jobs_already_there(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = await SqliteStore.open(path, clock=ManualClock(), retry_schedule=(0.0,))
    for i in range(5):
        await store.record_webhook(incoming_webhook(i, 1000.0))
    await store.aclose()
    conn = sqlite3.connect(path, isolation_level=None)  # back to the schema before migration 7
    for name in ("job_counts_insert", "job_counts_update", "job_counts_delete"):
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP TABLE job_counts")
    conn.execute("DELETE FROM schema_migrations WHERE version = 7")
    conn.close()
    store = await SqliteStore.open(path, clock=ManualClock(), retry_schedule=(0.0,))
    try:
        assert sorted(await store.job_counts()) == _counted(path) == [("video", "completed", 5)]
    finally:
        await store.aclose()


async def test_a_replay_runs_in_chunks_and_enqueues_each_event_once_in_order(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await SqliteStore.open(tmp_path / "r.db", clock=clock, retry_schedule=(0.0,))
    try:
        for i in range(7):
            await store.record_webhook(incoming_webhook(i, clock.now()))
            clock.advance(1.0 if i != 3 else 0.0)  # two events share a created_at: the id breaks the tie
        sub = await store.create_subscription(
            url="http://127.0.0.1:9/x", event_types=None, description=None, secret="whsec_AAAA", ordered=False
        )
        commits = store.commits
        assert await store.replay(sub.id, 0.0, chunk=3) == 7
        assert store.commits - commits >= 3  # 3 + 3 + 1 events, one transaction each
        deliveries, _ = await store.list_deliveries(
            subscription_id=sub.id, job_id=None, status=None, limit=100, after=None
        )
        assert len({d.event_id for d in deliveries}) == 7
        assert await store.replay("sub_missing", 0.0) is None
    finally:
        await store.aclose()
