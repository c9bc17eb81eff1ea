"""The SQLite store's core: connections, the group-commit writer, the checkpointer and reads."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, Unpack, cast

from service.clock import Clock
from service.secretbox import SecretBox
from service.store.protocol import Signals, StoreOptions
from service.store.sqlite.common import (
    CHECKPOINT_INTERVAL,
    GATHER_TURNS,
    MAX_BATCH,
    WAL_CATCH_UP_FRAMES,
    Op,
    StoreClosed,
    T,
    _begin,
    _passive_checkpoint,
    log,
    owner_only,
)
from service.store.sqlite.connection import Connection
from service.store.sqlite.migrations import apply_migrations
from service.store.sqlite.ops_deliveries import DeliveryOps
from service.store.sqlite.ops_webhooks import WebhookOps, _WebhookOp, run_webhooks
from service.store.sqlite.startup import migrate_file, release_leases, seal_stored_secrets


class _Ops(WebhookOps, DeliveryOps):
    """Every operation the writer runs: one object, so a batch shares its caches and flags."""


SETTLE_LIMIT = 1.0  # the longest a read waits for earlier webhooks to be applied
SETTLE_POLL = 0.05


class StoreCore:
    """The job store on one SQLite file. Open with `await SqliteStore.open(...)`; close with `aclose()`."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock,
        retry_schedule: tuple[float, ...] = (0.0, 5.0, 300.0),
        callback_secret: str | None = None,
        disable_after: float = 5 * 86400.0,
        box: SecretBox | None = None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.disable_after = disable_after
        self._ops = _Ops(clock, retry_schedule, callback_secret, box)
        self._writer_conn: Connection | None = None
        self._reader_conn: Connection | None = None
        self._checkpoint_conn: Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.wal_catch_up_frames = WAL_CATCH_UP_FRAMES
        self._catch_up = False
        self._queue: asyncio.Queue[tuple[Op[Any], asyncio.Future[Any]] | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self.signals = Signals(asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event())
        self.inbox_applied = asyncio.Event()  # set after a commit that applied inbox rows
        self.commits = 0
        self.committed_ops = 0
        # Called after a commit for each job that reached a terminal state (the duration metric).
        self.on_job_finished: Callable[[str, str, float], None] | None = None

    @classmethod
    async def open(cls, path: Path, *, clock: Clock, **options: Unpack[StoreOptions]) -> Self:
        store = cls(
            path,
            clock=clock,
            retry_schedule=options.get("retry_schedule", (0.0, 5.0, 300.0)),
            callback_secret=options.get("callback_secret"),
            disable_after=options.get("disable_after", 5 * 86400.0),
            box=options.get("box"),
        )  # a SQLite file has no pool or statement timeout
        await store._start()
        return store

    async def _connect(self) -> Connection:
        # The writer's connection is used from two threads in turn (see `_run_batch_here`).
        conn = await Connection.open(self.path)
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        # Each operation in a batch runs in its own savepoint, whose undo pages go to a temp file by
        # default: in memory they cost a copy instead of a write.
        await conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    async def _start(self) -> None:
        # The store's threads (reads, BEGIN/COMMIT, checkpoints) and the event loop share the GIL. With
        # the default 5 ms switch interval, the loop can wait up to 5 ms for it each time it hands it over;
        # 0.5 ms keeps request latency and delivery rate up.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        owner_only(self.path)
        self._writer_conn = await self._connect()
        now = self.clock.now()
        await self._writer_conn.run(lambda c: apply_migrations(c, now))
        if self._ops.box is not None:
            box = self._ops.box
            await self._write(lambda c: seal_stored_secrets(c, box))
            self._ops.forget_subscriptions()
        self._reader_conn = await self._connect()
        self._checkpoint_conn = await self._connect()
        # The writer never checkpoints: SQLite's automatic checkpoint runs inside whichever COMMIT pushes
        # the WAL past 1,000 pages, copying and fsyncing the database file while that batch (and every
        # request waiting on it) waits. A checkpoint on its own connection and thread does the same work
        # beside the writer (PASSIVE never blocks it).
        await self._writer_conn.execute("PRAGMA wal_autocheckpoint = 0")
        # When the WAL starts over, a file grown past this during a burst is cut back.
        await self._writer_conn.execute("PRAGMA journal_size_limit = 67108864")
        await self._write(lambda c: release_leases(c, self.clock.now()))
        self._writer_task = asyncio.create_task(self._writer_loop(), name="sorahook-store-writer")
        self._checkpoint_task = asyncio.create_task(self._checkpointer(), name="sorahook-store-checkpoint")

    @staticmethod
    async def migrate(path: Path, now: float) -> list[int]:
        """Apply migrations to the file and return the versions applied (for `sorahook migrate`)."""
        return await migrate_file(path, now)

    async def aclose(self) -> None:
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint_task
            self._checkpoint_task = None
        if self._writer_task is not None:
            await self._queue.put(None)
            await self._writer_task
            self._writer_task = None
        for conn in (self._checkpoint_conn, self._reader_conn, self._writer_conn):
            if conn is not None:
                await conn.close()  # the last one to close checkpoints the rest of the WAL
        self._checkpoint_conn = self._reader_conn = self._writer_conn = None

    async def checkpoint(self) -> tuple[int, int]:
        """Copy committed WAL frames into the database file: (frames in the WAL, frames copied)."""
        if self._checkpoint_conn is None:
            raise StoreClosed("the store is closed")
        log_frames, copied = await self._checkpoint_conn.run(_passive_checkpoint)
        # Under steady writes this checkpoint never catches the writer (new frames land while it copies),
        # and the WAL only starts over when a write begins with every frame copied, so under a long burst
        # it grows without bound. Past WAL_CATCH_UP_FRAMES the writer copies the few remaining frames itself,
        # between two batches, so its next write starts the WAL over.
        if log_frames >= self.wal_catch_up_frames:
            self._catch_up = True
        return log_frames, copied

    async def _checkpointer(self) -> None:
        """Checkpoint after commits, off the writer's path; a failed checkpoint is retried next time."""
        seen = self.commits
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if self.commits == seen:
                continue
            seen = self.commits
            try:
                await self.checkpoint()
            except sqlite3.Error as exc:
                log.warning("checkpoint failed; will retry", extra={"error": str(exc)})

    @property
    def writer_alive(self) -> bool:
        return self._writer_task is not None and not self._writer_task.done()

    # -- the group-commit writer ------------------------------------------------------------------

    async def _write(self, op: Op[T]) -> T:
        if self._writer_task is None:
            # Before the writer starts (start-up) or after it stopped: run alone, same transaction rules.
            if self._writer_conn is None:
                raise StoreClosed("the store is closed")
            results = await self._writer_conn.run(lambda c: self._run_batch(c, [op]))
            self._raise_signals()
            outcome = results[0]
            if isinstance(outcome, BaseException):
                raise outcome
            return cast(T, outcome)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, future))  # unbounded: never waits (and builds no coroutine)
        return await future

    async def _writer_loop(self) -> None:
        assert self._writer_conn is not None
        conn = self._writer_conn
        stopping = False
        while not stopping:
            item = await self._queue.get()
            await self._gather()
            batch: list[tuple[Op[Any], asyncio.Future[Any]]] = []
            if item is None:
                stopping = True
            else:
                batch.append(item)
            while len(batch) < MAX_BATCH and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stopping = True
                    continue
                batch.append(more)
            if not batch:
                continue
            ops = [op for op, _ in batch]
            try:
                results = await self._run_batch_here(conn, ops)
            except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
                continue
            self.commits += 1
            self.committed_ops += len(batch)
            self._raise_signals()
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
            if self._catch_up:
                self._catch_up = False
                with contextlib.suppress(sqlite3.Error):  # the checkpointer tries again later
                    await conn.run(_passive_checkpoint)

    async def _gather(self) -> None:
        """Let writes on their way join the batch: give the loop a turn while the queue keeps growing.

        Under load the loop is busy parsing and verifying the next requests when a commit returns; a
        batch taken at once held about half of them. Each turn costs microseconds, and a queue that did
        not grow in a turn (a quiet moment) ends the wait: the batch is larger only when writes arrive.
        """
        for _ in range(GATHER_TURNS):
            size = self._queue.qsize()
            await asyncio.sleep(0)
            if self._queue.qsize() == size:
                return

    async def _run_batch_here(self, conn: Connection, ops: list[Op[Any]]) -> list[Any]:
        """One batch: BEGIN and COMMIT on the store's thread, the operations on the event loop's.

        BEGIN may wait for the file lock and COMMIT waits for fsync, so they run off the loop. The
        operations themselves are SQLite calls of tens of microseconds: run on the store's thread, each
        call hands the GIL to the busy loop and waits up to a switch interval to get it back, which
        stretched a batch of a few webhooks to milliseconds at 1,000 webhooks/s. On the loop they cost
        the same CPU and no waiting. The connection is used by one side at a time: the writer task
        awaits each step before the next.
        """
        raw = conn.raw
        await conn.run(_begin)
        try:
            results = self._run_ops(raw, ops)
        except BaseException:
            await conn.run(self._rollback)
            raise
        await conn.run(self._commit)
        return results

    def _run_batch(self, conn: sqlite3.Connection, ops: list[Op[Any]]) -> list[Any]:
        """The same batch run entirely on the calling thread (before the writer task starts)."""
        _begin(conn)
        try:
            results = self._run_ops(conn, ops)
        except BaseException:
            self._rollback(conn)
            raise
        self._commit(conn)
        return results

    def _run_ops(self, conn: sqlite3.Connection, ops: list[Op[Any]]) -> list[Any]:
        """Each op's result (or its exception) in order, inside the open transaction.

        Operations almost never fail, and a savepoint per operation costs about a fifth of a webhook's
        SQL time. So a batch first runs under one savepoint; only if an operation raises is that rolled
        back and the batch run again with a savepoint around each operation, so the failing one leaves
        its neighbours intact. Operations are plain functions of the connection (any Python state they
        touch is the `_Ops` bookkeeping reset here), so running them twice is safe.
        """
        if len(ops) > 1:
            finished = len(self._ops.finished)
            conn.execute("SAVEPOINT batch")
            try:
                results = self._run_grouped(conn, ops)
            except Exception:
                conn.execute("ROLLBACK TO batch")
                self._ops.rolled_back(finished)
            else:
                conn.execute("RELEASE batch")
                return results
            conn.execute("RELEASE batch")
        results = []
        for op in ops:
            conn.execute("SAVEPOINT op")
            finished = len(self._ops.finished)
            try:
                results.append(op(conn))
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                self._ops.rolled_back(finished)
                results.append(exc)
            conn.execute("RELEASE op")
        return results

    def _run_grouped(self, conn: sqlite3.Connection, ops: list[Op[Any]]) -> list[Any]:
        """Each op's result in order; a run of webhooks next to each other is stored in one call."""
        results: list[Any] = []
        i = 0
        while i < len(ops):
            op = ops[i]
            if not isinstance(op, _WebhookOp):
                results.append(op(conn))
                i += 1
                continue
            j = i + 1
            while j < len(ops):
                nxt = ops[j]
                if not isinstance(nxt, _WebhookOp) or nxt.apply != op.apply:
                    break
                j += 1
            run = cast("list[_WebhookOp]", ops[i:j])
            results.extend(run_webhooks(self._ops, conn, [w.hook for w in run], apply=op.apply))
            i = j
        return results

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        self._ops.rolled_back()  # nothing of this batch happened

    def _commit(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise

    def _raise_signals(self) -> None:
        ops = self._ops
        if ops.flag_deliveries:
            self.signals.deliveries.set()
        if ops.flag_submissions:
            self.signals.submissions.set()
        if ops.flag_refreshes:
            self.signals.refreshes.set()
        if ops.flag_inbox:
            self.signals.inbox.set()
        if ops.flag_applied:
            self.inbox_applied.set()
        ops.flag_deliveries = ops.flag_submissions = ops.flag_refreshes = ops.flag_inbox = (
            ops.flag_applied
        ) = False
        finished, ops.finished = ops.finished, []
        if self.on_job_finished is not None:
            for kind, status, seconds in finished:
                self.on_job_finished(kind, status, seconds)

    async def _read_settled(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read that first lets the processor apply every webhook acknowledged before it began.

        The receiver answers once a webhook is in the inbox; a client that then reads its job expects
        to see the webhook applied, and normally it already is. When it is not, the read waits (at most
        SETTLE_LIMIT seconds) for the processor's batches to pass that point, then reads.
        """

        def first(c: sqlite3.Connection) -> tuple[int | None, T | None]:
            last = c.execute("SELECT MAX(seq) FROM inbox").fetchone()[0]
            return last, (fn(c) if last is None else None)

        last, result = await self._read(first)
        if last is None:
            return cast(T, result)
        deadline = asyncio.get_running_loop().time() + SETTLE_LIMIT
        while asyncio.get_running_loop().time() < deadline:
            self.inbox_applied.clear()
            oldest = await self._read(lambda c: c.execute("SELECT MIN(seq) FROM inbox").fetchone()[0])
            if oldest is None or oldest > last:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.inbox_applied.wait(), timeout=SETTLE_POLL)
        return await self._read(fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_conn is None:
            raise StoreClosed("the store is closed")
        return await self._reader_conn.run(fn)

    async def hold_singleton(self, name: str) -> bool:
        """Always: one process owns a SQLite file, so its one-at-a-time workers are alone by construction."""
        return True

    # -- health -----------------------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            await self._read(lambda c: c.execute("SELECT 1").fetchone())
        except Exception:
            return False
        return self.writer_alive
