"""The store's group-commit writer: a batch commits together, and one failing operation in it undoes only
itself (the batch first runs under one savepoint, then again with one per operation); and the WAL is
checkpointed beside the writer without growing for ever."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from service.clock import ManualClock
from service.domain import Observation
from service.store.records import IncomingWebhook
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


# A few webhook ids (so some repeat), resources (so some share a job) and types (one we do not model).
_HOOK = st.tuples(
    st.sampled_from(["wh_1", "wh_2", "wh_3", "wh_4", "wh_5"]),
    st.sampled_from(["video_a", "video_b", "batch_c"]),
    st.sampled_from(
        [
            "video.completed",
            "video.failed",
            "batch.completed",
            "response.incomplete",
            "realtime.call.incoming",
        ]
    ),
)


def _hook(webhook_id: str, resource_id: str, event_type: str, now: float) -> IncomingWebhook:
    data: dict[str, Any] = {"id": resource_id}
    body = {"id": f"evt_{webhook_id}", "object": "event", "type": event_type, "data": data}
    return IncomingWebhook(
        webhook_id, int(now), f"evt_{webhook_id}", event_type, resource_id, int(now), json.dumps(body), data
    )


async def _store_webhooks(
    path: Path, hooks: list[tuple[str, str, str]], tracked: bool, together: bool
) -> dict[str, Any]:
    """Store `hooks` one at a time or all in one batch; what the file then holds, without our random ids."""
    clock = ManualClock()
    store = await SqliteStore.open(path, clock=clock, retry_schedule=(1.0,))
    try:
        await store.configure_archive(("video", "thumbnail"))
        await store.create_subscription(
            url="http://sub.example/hook",
            event_types=None,
            description=None,
            secret="whsec_AAAA",
            ordered=True,
        )
        if tracked:
            await store.track_job(
                kind="video", resource_id="video_a", callback_url="http://cb.example/x", metadata={}
            )
        incoming = [_hook(*h, clock.now()) for h in hooks]
        if together:
            commits = store.commits
            outcomes = await asyncio.gather(*(store.record_webhook(h) for h in incoming))
            assert store.commits - commits == 1  # one batch: the set-based path ran
        else:
            outcomes = [await store.record_webhook(h) for h in incoming]
    finally:
        await store.aclose()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        resource = dict(conn.execute("SELECT id, resource_id FROM jobs").fetchall())

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(resource.get(v, v) for v in row) for row in conn.execute(sql).fetchall()]

        return {
            "outcomes": [(o.status, resource.get(o.job_id)) for o in outcomes],
            "jobs": sorted(
                rows(
                    "SELECT resource_id, kind, status, progress, origin, sequence, completed_at, refresh_at,"
                    " callback_url FROM jobs"
                )
            ),
            "events": rows(
                "SELECT direction, type, job_id, source, webhook_id, openai_event_id, body IS NOT NULL, headers"
                " FROM events ORDER BY id"
            ),
            "deliveries": rows(
                "SELECT event_type, subscription_id IS NOT NULL, job_id, url, ordering_key IS NOT NULL, sequence,"
                " status FROM deliveries ORDER BY id"
            ),
            "archives": sorted(rows("SELECT job_id, variant, status FROM archives")),
            "received": sorted(rows("SELECT webhook_id FROM received_webhooks")),
            "counts": sorted(rows("SELECT kind, status, n FROM job_counts WHERE n > 0")),
            "counted": sorted(rows("SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status")),
        }
    finally:
        conn.close()


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(hooks=st.lists(_HOOK, min_size=1, max_size=12), tracked=st.booleans())
def test_a_batch_of_webhooks_is_stored_as_one_at_a_time(
    tmp_path_factory: pytest.TempPathFactory, hooks: list[tuple[str, str, str]], tracked: bool
) -> None:
    """The writer stores a run of webhooks set-based; the file must hold what storing each alone gives:
    repeats, several webhooks about one job (made in the same batch or tracked before), types we do not
    model, outbox rows with ordering and a callback, archive rows, the job counts."""
    one = asyncio.run(
        _store_webhooks(tmp_path_factory.mktemp("one") / "s.db", hooks, tracked, together=False)
    )
    batched = asyncio.run(
        _store_webhooks(tmp_path_factory.mktemp("all") / "s.db", hooks, tracked, together=True)
    )
    assert batched == one
    assert batched["counts"] == batched["counted"]


async def test_writes_still_on_their_way_join_the_batch(tmp_path: Path) -> None:
    """The writer gives the loop a few turns while its queue grows: writes that arrive a turn or two
    apart (requests still being parsed) commit together, not one commit each."""
    clock = ManualClock()
    store = await SqliteStore.open(tmp_path / "g.db", clock=clock)
    try:

        async def arriving(i: int) -> str:
            for _ in range(i % 3):  # 0, 1 or 2 loop turns late
                await asyncio.sleep(0)
            return (await store.record_webhook(incoming_webhook(i, clock.now()))).status

        commits = store.commits
        assert await asyncio.gather(*(arriving(i) for i in range(12))) == ["accepted"] * 12
        assert store.commits - commits == 1
        commits = store.commits  # and a lone write is not held back waiting for company
        assert (await store.record_webhook(incoming_webhook(99, clock.now()))).status == "accepted"
        assert store.commits - commits == 1
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
    for name in ("job_counts_update", "job_counts_delete"):  # (migration 9 dropped the insert trigger)
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP TABLE job_counts")
    conn.execute("DELETE FROM schema_migrations WHERE version IN (7, 9)")
    conn.close()
    store = await SqliteStore.open(path, clock=ManualClock(), retry_schedule=(0.0,))
    try:
        assert sorted(await store.job_counts()) == _counted(path) == [("video", "completed", 5)]
        await store.record_webhook(incoming_webhook(5, 1000.0))  # and counted on from there
        assert sorted(await store.job_counts()) == _counted(path) == [("video", "completed", 6)]
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


async def test_a_replay_until_a_time_stops_before_it_across_chunks(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await SqliteStore.open(tmp_path / "r.db", clock=clock, retry_schedule=(0.0,))
    try:
        start = clock.now()
        for i in range(7):
            await store.record_webhook(incoming_webhook(i, clock.now()))
            clock.advance(1.0)
        sub = await store.create_subscription(
            url="http://127.0.0.1:9/x", event_types=None, description=None, secret="whsec_AAAA", ordered=False
        )
        # Events at start+0 .. start+6: [start+1, start+5) holds four of them; `until` is exclusive.
        assert await store.replay(sub.id, start + 1, chunk=2, until=start + 5) == 4
        deliveries, _ = await store.list_deliveries(
            subscription_id=sub.id, job_id=None, status=None, limit=100, after=None
        )
        made = []
        for d in deliveries:
            assert d.job_id is not None
            made += [e.created_at - start for e in await store.job_events(d.job_id) if e.id == d.event_id]
        assert sorted(made) == [1.0, 2.0, 3.0, 4.0]
        assert await store.replay(sub.id, start + 2, until=start + 2) == 0
    finally:
        await store.aclose()
