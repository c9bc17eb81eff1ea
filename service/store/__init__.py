"""The job store: `open_store(url)` picks the backend; callers depend on `service.store.protocol`.

Backends: `sqlite:///PATH` (service.store.sqlite). A PostgreSQL URL is recognised and refused with
one line until that backend exists.
"""

from __future__ import annotations

from typing import Unpack

from service.clock import Clock
from service.config import parse_database_url
from service.store.protocol import Store, StoreOptions


async def open_store(url: str, *, clock: Clock, **options: Unpack[StoreOptions]) -> Store:
    """Open (and migrate) the store named by `url`, ready for writes. ConfigError on a URL it cannot use."""
    path = parse_database_url(url)  # the one place that knows which schemes exist
    from service.store.sqlite import SqliteStore  # the backend is loaded only when chosen

    return await SqliteStore.open(path, clock=clock, **options)


async def migrate_store(url: str, now: float) -> list[int]:
    """Bring the schema of the store named by `url` up to date; the versions applied (`sorahook migrate`)."""
    path = parse_database_url(url)
    from service.store.sqlite import SqliteStore

    return await SqliteStore.migrate(path, now)
