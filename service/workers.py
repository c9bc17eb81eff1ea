"""The shape every background worker shares: `run_once()` does one step, `run()` loops around it."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("sorahook.workers")


class Worker(Protocol):
    name: str

    async def run(self) -> None: ...


def backoff(attempt: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with jitter: about base·2^attempt, never above cap."""
    return float(min(cap, base * (2 ** min(attempt, 30))) * random.uniform(0.5, 1.0))


async def wait_for_signal(event: asyncio.Event, timeout: float) -> None:
    """Sleep until `event` is set or `timeout` passes, then clear the event."""
    if not event.is_set():
        try:
            await asyncio.wait_for(event.wait(), timeout=max(timeout, 0.0))
        except TimeoutError:
            pass
    event.clear()


async def loop_forever(name: str, step: Callable[[], Awaitable[None]], pause_on_error: float = 1.0) -> None:
    """Run `step` forever; an unexpected error is logged and the loop goes on after a pause."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker step failed", extra={"worker": name})
            await asyncio.sleep(pause_on_error)
