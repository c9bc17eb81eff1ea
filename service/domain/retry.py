"""When to try again: the one backoff function, and the delivery and reconcile policies built on it.

Every retry in the service waits `backoff(...)`: OpenAI calls, submissions, refreshes, archive
copies and the reconciler's own pauses (exponential from a base, capped, with jitter), deliveries
(the operator's schedule, with jitter), and the reconciler's per-job asks (exponential, no jitter,
so jobs due together stay together and share list pages).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Uniform = Callable[[float, float], float]

EXPONENT_LIMIT = 30  # 2**30 base delays is past any cap; bounding it keeps the float finite


def backoff(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 300.0,
    schedule: Sequence[float] | None = None,
    jitter: tuple[float, float] = (0.5, 1.0),
    uniform: Uniform = random.uniform,
) -> float:
    """The wait before retry `attempt` (0 is the first retry), in seconds.

    Without a schedule: base·2^attempt, at most `cap`. With one: its `attempt`-th entry (the last
    entry once past its end). Then scaled by a factor drawn from `jitter` (low, high), so that
    many clients failing together do not retry together; (1, 1) is no jitter.
    """
    attempt = max(attempt, 0)
    if schedule:
        nominal = float(schedule[min(attempt, len(schedule) - 1)])
    else:
        nominal = min(cap, base * 2.0 ** min(attempt, EXPONENT_LIMIT))
    low, high = jitter
    return nominal if low == high == 1.0 else nominal * uniform(low, high)


DELIVERY_JITTER = (0.8, 1.2)
RETRY_AFTER_CODES = frozenset({429, 503})
GONE = 410

DeliveryVerdictStatus = Literal["succeeded", "failed", "dead"]


@dataclass(frozen=True, slots=True)
class DeliveryVerdict:
    """What one delivery attempt means: the delivery's new status, when to try again, what to say.

    `disable` is the reason to disable the subscription (410 Gone), or None.
    """

    status: DeliveryVerdictStatus
    next_attempt_at: float | None
    error: str | None
    disable: str | None = None


def delivery_verdict(
    *,
    status_code: int | None,
    error: str | None,
    step: int,
    schedule: Sequence[float],
    retry_after: float | None,
    now: float,
    uniform: Uniform = random.uniform,
) -> DeliveryVerdict:
    """The retry policy for a delivery attempt: 2xx succeeds, 410 is dead and stops the subscription,
    anything else waits the schedule's `step`-th delay (at least a 429/503's Retry-After, never more
    than the schedule's longest delay) until the schedule runs out, then it is dead.

    `step` counts attempts since the schedule (re)started: a manual retry starts it again.
    """
    if status_code is not None and 200 <= status_code < 300:
        return DeliveryVerdict("succeeded", None, error)
    if status_code == GONE:
        return DeliveryVerdict(
            "dead",
            None,
            error or "410 Gone: the endpoint asked to stop",
            disable="endpoint answered 410 Gone",
        )
    if step >= len(schedule):
        return DeliveryVerdict("dead", None, error)
    delay = backoff(step, schedule=schedule, jitter=DELIVERY_JITTER, uniform=uniform)
    if retry_after is not None and status_code in RETRY_AFTER_CODES:
        delay = max(delay, min(retry_after, max(schedule)))
    return DeliveryVerdict("failed", now + delay, error)


def should_disable(failing_since: float | None, now: float, disable_after: float) -> bool:
    """A subscription failing without a success for `disable_after` seconds is disabled."""
    return failing_since is not None and now - failing_since >= disable_after


def reconcile_delay(misses: int, *, base: float, cap: float) -> float:
    """How long to wait before asking OpenAI again about a job it has reported unchanged `misses` times."""
    return backoff(misses - 1, base=base, cap=cap, jitter=(1.0, 1.0))
