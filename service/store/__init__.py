"""The job store: `open_store(url)` picks the backend; callers depend on `service.store.protocol`.

Backends: `sqlite:///PATH` (service.store.sqlite). A PostgreSQL URL is recognised and refused with
one line until that backend exists.
"""

from __future__ import annotations

from service.clock import Clock
from service.config import parse_database_url
from service.secretbox import SecretBox
from service.store.protocol import Store


async def open_store(
    url: str,
    *,
    clock: Clock,
    retry_schedule: tuple[float, ...] = (0.0, 5.0, 300.0),
    callback_secret: str | None = None,
    disable_after: float = 5 * 86400.0,
    box: SecretBox | None = None,
) -> Store:
    """Open (and migrate) the store named by `url`, ready for writes. ConfigError on a URL it cannot use.

    `retry_schedule` is the delivery backoff, `callback_secret` signs job callbacks, `disable_after`
    is how long a subscription may fail before it is disabled, and `box` seals subscription secrets.
    """
    path = parse_database_url(url)  # the one place that knows which schemes exist
    from service.store.sqlite import SqliteStore  # the backend is loaded only when chosen

    return await SqliteStore.open(
        path,
        clock=clock,
        retry_schedule=retry_schedule,
        callback_secret=callback_secret,
        disable_after=disable_after,
        box=box,
    )


async def migrate_store(url: str, now: float) -> list[int]:
    """Bring the schema of the store named by `url` up to date; the versions applied (`sorahook migrate`)."""
    path = parse_database_url(url)
    from service.store.sqlite import SqliteStore

    return await SqliteStore.migrate(path, now)
