"""The store's group-commit writer: a batch commits together, and one failing operation in it undoes only
itself (the batch first runs under one savepoint, then again with one per operation); and the WAL is
checkpointed beside the writer without growing for ever."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from service.clock import ManualClock
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
