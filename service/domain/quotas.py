"""Per-client quotas (concurrent jobs, jobs per hour, estimated spend per day) and the job a request asks for."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

QuotaParam = Literal["concurrent_jobs", "jobs_per_hour", "daily_spend_usd"]

HOUR = 3600.0
DAY = 86400.0
# A concurrent slot frees when some job ends, which nobody can predict: ask the caller to come back soon.
CONCURRENT_RETRY_AFTER = 30.0


@dataclass(frozen=True)
class Quotas:
    """Limits per client; None is no limit."""

    concurrent: int | None = None
    per_hour: int | None = None
    daily_usd: float | None = None

    @property
    def any(self) -> bool:
        return self.concurrent is not None or self.per_hour is not None or self.daily_usd is not None


@dataclass(frozen=True)
class NewJob:
    """A validated video job request, ready to store."""

    request: dict[str, Any]
    callback_url: str | None
    metadata: dict[str, str]
    client: str | None
    estimated_cost_usd: float | None


class QuotaExceeded(Exception):
    """A client is over one of its limits; `retry_after` is when, at the soonest, the request could pass."""

    def __init__(self, param: QuotaParam, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.retry_after = retry_after


def client_label(client: str | None) -> str:
    return repr(client) if client is not None else "without a client"


def per_hour_retry_after(created: list[float], adding: int, limit: int, now: float) -> float:
    """Seconds until enough of the jobs created in the last hour (oldest first) leave the window."""
    must_leave = len(created) + adding - limit
    if adding > limit or must_leave > len(created):
        return HOUR  # the request alone is over the limit: no wait makes it pass
    return max(1.0, created[must_leave - 1] + HOUR - now)


def daily_retry_after(spent: list[tuple[float, float]], adding: float, limit: float, now: float) -> float:
    """Seconds until the spend of the last 24 h (oldest first: (created_at, usd)) leaves room for `adding`."""
    if adding > limit:
        return DAY
    total = sum(usd for _, usd in spent)
    for created_at, usd in spent:
        total -= usd
        if total + adding <= limit + 1e-9:
            return max(1.0, created_at + DAY - now)
    return DAY


SPEND_EPSILON = 1e-9  # sums of float dollars: a request exactly at the limit passes


def demand(jobs: Iterable[NewJob]) -> dict[str | None, tuple[int, float]]:
    """What a request asks of each client's quotas: (jobs, estimated dollars) per client."""
    wanted: dict[str | None, tuple[int, float]] = {}
    for spec in jobs:
        n, usd = wanted.get(spec.client, (0, 0.0))
        wanted[spec.client] = (n + 1, usd + (spec.estimated_cost_usd or 0.0))
    return wanted


def concurrent_refusal(client: str | None, active: int, adding: int, limit: int) -> QuotaExceeded | None:
    """The refusal when `adding` jobs next to the client's `active` unfinished ones pass its limit."""
    if active + adding <= limit:
        return None
    return QuotaExceeded(
        "concurrent_jobs",
        f"client {client_label(client)} has {active} unfinished job(s); {adding} more would pass its limit of"
        f" {limit} concurrent jobs (SORAHOOK_QUOTA_CONCURRENT)",
        CONCURRENT_RETRY_AFTER,
    )


def per_hour_exceeded(recent: int, adding: int, limit: int) -> bool:
    return recent + adding > limit


def per_hour_refusal(
    client: str | None, created: list[float], adding: int, limit: int, now: float
) -> QuotaExceeded:
    """The refusal for a client whose jobs of the last hour (`created`, oldest first) leave no room."""
    return QuotaExceeded(
        "jobs_per_hour",
        f"client {client_label(client)} created {len(created)} job(s) in the last hour; {adding} more would pass"
        f" its limit of {limit} jobs per hour (SORAHOOK_QUOTA_PER_HOUR)",
        per_hour_retry_after(created, adding, limit, now),
    )


def daily_exceeded(spent: float, adding: float, limit: float) -> bool:
    return spent + adding > limit + SPEND_EPSILON


def daily_refusal(
    client: str | None, spent: list[tuple[float, float]], adding: float, limit: float, now: float
) -> QuotaExceeded:
    """The refusal for a client whose spend of the last 24 h (`spent`, oldest first) leaves no room."""
    total = sum(usd for _, usd in spent)
    return QuotaExceeded(
        "daily_spend_usd",
        f"client {client_label(client)} has an estimated ${total:.4f} of videos in the last 24 h; ${adding:.4f}"
        f" more would pass its limit of ${limit:.2f} a day (SORAHOOK_QUOTA_DAILY_USD)",
        daily_retry_after(spent, adding, limit, now),
    )
