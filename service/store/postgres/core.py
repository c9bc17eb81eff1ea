"""The PostgreSQL store's core: the connection pool, transactions, wake-ups across replicas, health.

Every write is one transaction on a pooled connection (`tx()`); PostgreSQL's own group commit batches
the fsyncs of concurrent commits, so there is no writer task here. A transaction records what it gave
the workers to do on its `Tx`; at commit it sends one NOTIFY, which every replica's listener turns into
its local `Signals`, so an idle worker anywhere wakes without polling. The workers still poll as a
fallback (a notification is lost while a listener reconnects).

Connection failures become `StoreUnavailable`, which the app answers with 503: while the database is
away, nothing is acknowledged that was not stored, and the pool reconnects by itself when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from service.clock import Clock
from service.secretbox import SecretBox
from service.store.protocol import Signals, StoreUnavailable

log = logging.getLogger("sorahook.store")

T = TypeVar("T")

CHANNEL = "sorahook"  # the NOTIFY channel; the payload names which workers have something to do
SETTLE_LIMIT = 1.0  # the longest a read waits for earlier webhooks to be applied
SETTLE_POLL = 0.05
LISTENER_RETRY = 1.0  # seconds between attempts to reopen the listener or a singleton lock's connection

# What a lost or refused connection raises; anything else is a bug or a constraint and is not hidden.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # includes a connection closed under a query
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


def lock_key(schema: str, name: str) -> int:
    """A 64-bit advisory-lock key for `name` in this schema (locks are per database, schemas share them)."""
    digest = hashlib.blake2b(f"{schema}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass
class Tx:
    """One transaction: its connection, and what it found for the workers (raised after the commit)."""

    conn: asyncpg.Connection
    deliveries: bool = False
    submissions: bool = False
    refreshes: bool = False
    inbox: bool = False
    applied: bool = False  # inbox rows were applied (reads waiting to settle may go)
    # Jobs that reached a terminal state here: (kind, status, seconds since creation).
    finished: list[tuple[str, str, float]] = field(default_factory=list)

    def wakeups(self) -> list[str]:
        """The workers other replicas should wake for; the inbox is applied by whoever holds its lock."""
        return [
            name
            for name, raised in (
                ("deliveries", self.deliveries),
                ("submissions", self.submissions),
                ("refreshes", self.refreshes),
            )
            if raised
        ]


class PgCore:
    """The pool and its rules, shared by the query mixins of `PostgresStore`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        dsn: str,
        schema: str,
        clock: Clock,
        retry_schedule: tuple[float, ...] = (0.0, 5.0, 300.0),
        callback_secret: str | None = None,
        disable_after: float = 5 * 86400.0,
        box: SecretBox | None = None,
    ) -> None:
        self.pool = pool
        self.dsn = dsn
        self.schema = schema
        self.clock = clock
        self.retry_schedule = retry_schedule
        self.callback_secret = callback_secret
        self.disable_after = disable_after
        self.box = box
        self.archive_variants: tuple[str, ...] = ()  # set by configure_archive
        self.signals = Signals(asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event())
        self.inbox_applied = asyncio.Event()
        self.on_job_finished: Callable[[str, str, float], None] | None = None
        self._listener: asyncpg.Connection | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._singletons: dict[str, asyncpg.Connection] = {}
        self._closed = False

    # -- transactions and reads -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        try:
            async with self.pool.acquire() as conn:
                tx = Tx(conn)
                async with conn.transaction():
                    yield tx
                    wake = tx.wakeups()
                    if wake:  # delivered by PostgreSQL at commit, and only if it commits
                        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, ",".join(wake))
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL is unreachable: {exc}") from exc
        self._after_commit(tx)

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `fn` in a transaction of its own and return what it returned."""
        async with self.tx() as tx:
            return await fn(tx)

    async def read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn` on a pooled connection outside any explicit transaction (each statement sees the
        latest commits)."""
        try:
            async with self.pool.acquire() as conn:
                return await fn(conn)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL is unreachable: {exc}") from exc

    async def read_settled(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """A read that first lets the processors apply every webhook acknowledged before it began.

        The receiver answers once a webhook is in the inbox; a client that then reads its job expects to
        see the webhook applied. When it is not yet, the read waits (at most SETTLE_LIMIT seconds) for
        the inbox to pass that point, then reads. The processor may be on another replica, so this polls.
        """
        last = await self.read(lambda c: c.fetchval("SELECT max(seq) FROM inbox"))
        if last is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SETTLE_LIMIT
            while loop.time() < deadline:
                self.inbox_applied.clear()
                oldest = await self.read(lambda c: c.fetchval("SELECT min(seq) FROM inbox"))
                if oldest is None or oldest > last:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.inbox_applied.wait(), timeout=SETTLE_POLL)
        return await self.read(fn)

    def _after_commit(self, tx: Tx) -> None:
        if tx.deliveries:
            self.signals.deliveries.set()
        if tx.submissions:
            self.signals.submissions.set()
        if tx.refreshes:
            self.signals.refreshes.set()
        if tx.inbox:
            self.signals.inbox.set()
        if tx.applied:
            self.inbox_applied.set()
        if self.on_job_finished is not None:
            for kind, status, seconds in tx.finished:
                self.on_job_finished(kind, status, seconds)

    # -- secrets ----------------------------------------------------------------------------------

    def seal_secret(self, value: str, owner: str) -> str:
        return self.box.seal(value, owner) if self.box is not None else value

    def open_secret(self, value: str, owner: str) -> str:
        """The secret sealed in `value` for subscription `owner`; SealError when it does not open."""
        return self.box.open(value, owner) if self.box is not None else value

    # -- wake-ups from other replicas -------------------------------------------------------------

    async def start_listener(self) -> None:
        self._listener_task = asyncio.create_task(self._listen(), name="sorahook-store-listener")

    async def _listen(self) -> None:
        """Keep one connection LISTENing; reopen it when it drops (and wake everyone, in case)."""
        while not self._closed:
            try:
                conn = await asyncpg.connect(self.dsn)
            except Exception as exc:  # the database is away: try again shortly
                log.debug("listener cannot connect", extra={"error": str(exc)})
                await asyncio.sleep(LISTENER_RETRY)
                continue
            self._listener = conn
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            await conn.add_listener(CHANNEL, self._notified)
            for event in (self.signals.deliveries, self.signals.submissions, self.signals.refreshes):
                event.set()  # something may have been missed while no one listened
            while not self._closed and not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=LISTENER_RETRY)
            self._listener = None
            if not conn.is_closed():
                conn.terminate()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        for name in payload.split(","):
            event = getattr(self.signals, name, None)
            if isinstance(event, asyncio.Event):
                event.set()

    # -- one replica at a time --------------------------------------------------------------------

    async def hold_singleton(self, name: str) -> bool:
        """True while this replica holds the session advisory lock for `name` (the reconciler, the pruner).

        The lock lives on a connection of its own: if this replica dies, PostgreSQL ends the session and
        releases the lock, and another replica takes it at its next try.
        """
        conn = self._singletons.get(name)
        if conn is not None and not conn.is_closed():
            return True
        self._singletons.pop(name, None)
        try:
            conn = await asyncpg.connect(self.dsn)
        except Exception:
            return False
        try:
            held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(self.schema, name)))
        except Exception:
            held = False
        if not held:
            conn.terminate()
            return False
        self._singletons[name] = conn
        return True

    # -- health and closing -----------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(2.0):
                await self.read(lambda c: c.fetchval("SELECT 1"))
        except (StoreUnavailable, TimeoutError):
            return False
        return True

    async def aclose(self) -> None:
        self._closed = True
        if self._listener_task is not None:
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener_task
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        for conn in self._singletons.values():
            if not conn.is_closed():
                await conn.close()
        self._singletons.clear()
        await self.pool.close()
