"""The job store: `open_store(url)` picks the backend; callers depend on `service.store.protocol`.

Backends: `sqlite:///PATH` (service.store.sqlite), the zero-setup default for one process, and
`postgresql://USER:PASS@HOST:PORT/DB` (service.store.postgres) for any number of replicas. A backend is
imported only when chosen.
"""

from __future__ import annotations

from typing import Unpack

from service.clock import Clock
from service.config import check_postgres_url, is_postgres_url, parse_database_url
from service.store.protocol import Store, StoreOptions


async def open_store(url: str, *, clock: Clock, **options: Unpack[StoreOptions]) -> Store:
    """Open (and migrate) the store named by `url`, ready for writes. ConfigError on a URL it cannot use."""
    if is_postgres_url(url):
        from service.store.postgres import PostgresStore

        return await PostgresStore.open(check_postgres_url(url), clock=clock, **options)
    path = parse_database_url(url)
    from service.store.sqlite import SqliteStore

    return await SqliteStore.open(path, clock=clock, **options)


async def migrate_store(url: str, now: float) -> list[int]:
    """Bring the schema of the store named by `url` up to date; the versions applied (`sorahook migrate`)."""
    if is_postgres_url(url):
        from service.store.postgres import PostgresStore

        return await PostgresStore.migrate(check_postgres_url(url), now)
    path = parse_database_url(url)
    from service.store.sqlite import SqliteStore

    return await SqliteStore.migrate(path, now)
