"""Fan-out: which deliveries one emitted event makes, and the ordering key that keeps a job's in order.

A delivery with an ordering key waits until every earlier delivery (by job sequence) with the same
key is settled, so a subscriber that asked for order, and every job callback, sees a job's events
in the order they happened. Deliveries without a key go out as they come.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from service.domain.jobs import matches_filter


class Subscriber(Protocol):
    """What fan-out needs to know of a subscription."""

    @property
    def id(self) -> str: ...

    @property
    def event_types(self) -> list[str] | None: ...

    @property
    def ordered(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Target:
    """One delivery to make: to a subscription, or (subscription None) to a job's callback URL."""

    subscription_id: str | None
    url: str | None
    ordering_key: str | None
    sequence: int | None


def ordering_key(owner: str, job_id: str | None) -> str | None:
    """The key that orders one job's deliveries to one destination (a subscription id, or `callback`)."""
    return f"{owner}:{job_id}" if job_id else None


def subscription_ordering_key(sub: Subscriber, job_id: str | None) -> str | None:
    return ordering_key(sub.id, job_id) if sub.ordered else None


def fan_out(
    event_type: str,
    subscriptions: Iterable[Subscriber],
    *,
    job_id: str | None = None,
    job_sequence: int | None = None,
    callback_url: str | None = None,
    only_subscription: str | None = None,
    exclude_subscription: str | None = None,
) -> list[Target]:
    """The deliveries an event makes: each enabled subscription whose filter matches (or just
    `only_subscription`, filter or not: a test or a replay to one), then the job's callback, if any,
    which always gets its events in order."""
    targets: list[Target] = []
    for sub in subscriptions:
        if only_subscription is not None and sub.id != only_subscription:
            continue
        if sub.id == exclude_subscription:
            continue
        if only_subscription is None and not matches_filter(event_type, sub.event_types):
            continue
        targets.append(Target(sub.id, None, subscription_ordering_key(sub, job_id), job_sequence))
    if callback_url and job_id and only_subscription is None:
        targets.append(Target(None, callback_url, ordering_key("callback", job_id), job_sequence))
    return targets
