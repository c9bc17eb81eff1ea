"""The PostgreSQL backend (asyncpg): the same operations as the SQLite store, for any number of replicas.

Every write is one transaction on a pooled connection, running the same pure planner
(`service.domain`) as SQLite does. Work that one replica must do alone is claimed with
`FOR UPDATE SKIP LOCKED` and a lease (submissions, refreshes, archive copies, deliveries); the inbox is
applied under a transaction-level advisory lock, so webhooks of one resource are applied in the order
they were received whichever replica received them; the reconciler and the pruner run under a session
advisory lock (`hold_singleton`). Replicas wake each other with LISTEN/NOTIFY (`core`).

Modules: `core` (pool, transactions, wake-ups, health), `ops` (what runs inside a transaction: jobs, the
state machine's writes, the outbox), one module of queries per concern (`inbox`, `jobs`,
`subscriptions`, `deliveries`, `archives`, `requests`, `retention`, `console`) and `migrations/` (the
schema, one `.sql` file per version).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Self, Unpack

import asyncpg

from service.clock import Clock
from service.config import ConfigError
from service.secretbox import SealError, SecretBox
from service.store.postgres.archives import ArchiveQueries
from service.store.postgres.console import ConsoleQueries
from service.store.postgres.core import lock_key
from service.store.postgres.deliveries import DeliveryQueries
from service.store.postgres.inbox import InboxQueries
from service.store.postgres.jobs import JobQueries
from service.store.postgres.migrations import MIGRATION_LOCK, apply_migrations
from service.store.postgres.requests import RequestQueries
from service.store.postgres.retention import RetentionQueries
from service.store.postgres.subscriptions import SubscriptionQueries
from service.store.protocol import StoreOptions

log = logging.getLogger("sorahook.store")

DEFAULT_POOL_SIZE = 10
DEFAULT_STATEMENT_TIMEOUT = 30.0
CONNECT_PATIENCE = 10.0  # seconds start-up keeps trying to reach the database before giving up


class PostgresStore(
    InboxQueries,
    JobQueries,
    SubscriptionQueries,
    DeliveryQueries,
    ArchiveQueries,
    RequestQueries,
    RetentionQueries,
    ConsoleQueries,
):
    """The job store on a PostgreSQL database. Open with `await PostgresStore.open(url, ...)`."""

    @classmethod
    async def open(cls, dsn: str, *, clock: Clock, **options: Unpack[StoreOptions]) -> Self:
        pool_size = options.get("pool_size", DEFAULT_POOL_SIZE)
        timeout = options.get("statement_timeout", DEFAULT_STATEMENT_TIMEOUT)
        conn = await _connect(dsn)
        try:
            schema = str(await conn.fetchval("SELECT current_schema()"))
            await apply_migrations(conn, clock.now(), lock_key(schema, MIGRATION_LOCK))
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=pool_size,
            server_settings={"statement_timeout": str(int(timeout * 1000)), "application_name": "sorahook"},
        )
        store = cls(
            pool,
            dsn=dsn,
            schema=schema,
            clock=clock,
            retry_schedule=options.get("retry_schedule", (0.0, 5.0, 300.0)),
            callback_secret=options.get("callback_secret"),
            disable_after=options.get("disable_after", 5 * 86400.0),
            box=options.get("box"),
        )
        if store.box is not None:
            await store.write(lambda tx: seal_stored_secrets(tx.conn, store.box))
        await store.start_listener()
        return store

    @staticmethod
    async def migrate(dsn: str, now: float) -> list[int]:
        """Apply migrations and return the versions applied (for `sorahook migrate`)."""
        conn = await _connect(dsn)
        try:
            schema = str(await conn.fetchval("SELECT current_schema()"))
            return await apply_migrations(conn, now, lock_key(schema, MIGRATION_LOCK))
        finally:
            await conn.close()


async def _connect(dsn: str) -> asyncpg.Connection:
    """One connection, retried for a few seconds (replicas may start beside their database)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_PATIENCE
    while True:
        try:
            return await asyncpg.connect(dsn, timeout=5.0)
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError) as exc:
            if loop.time() >= deadline:
                raise ConfigError(f"SORAHOOK_DATABASE_URL: cannot reach PostgreSQL: {exc}") from None
            await asyncio.sleep(0.5)
        except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError) as exc:
            raise ConfigError(f"SORAHOOK_DATABASE_URL: PostgreSQL refused the connection: {exc}") from None


async def seal_stored_secrets(conn: Any, box: SecretBox | None) -> None:
    """Seal, bound to their row, secrets stored in plaintext or sealed before that binding (as SQLite does).

    Replicas starting together may both do it: each update is conditional on the value it read.
    """
    assert box is not None
    rows = await conn.fetch(
        "SELECT id, secret, previous_secret FROM subscriptions WHERE secret NOT LIKE 'sealed:v2:%'"
        " OR (previous_secret IS NOT NULL AND previous_secret NOT LIKE 'sealed:v2:%')"
    )
    for sub_id, secret, previous in rows:
        try:
            sealed = box.reseal(secret, sub_id)
            sealed_previous = box.reseal(previous, sub_id) if previous else previous
        except SealError:
            log.warning("a subscription secret does not open with SORAHOOK_SECRET_KEY", extra={"id": sub_id})
            continue
        await conn.execute(
            "UPDATE subscriptions SET secret = $1, previous_secret = $2 WHERE id = $3 AND secret = $4",
            sealed,
            sealed_previous,
            sub_id,
            secret,
        )
