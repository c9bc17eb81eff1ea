"""The shape every background worker shares: `run_once()` does one step, `run()` loops around it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("sorahook.workers")


class Worker(Protocol):
    name: str

    async def run(self) -> None: ...


async def wait_for_signal(event: asyncio.Event, timeout: float) -> None:
    """Sleep until `event` is set or `timeout` passes, then clear the event."""
    if not event.is_set():
        try:
            await asyncio.wait_for(event.wait(), timeout=max(timeout, 0.0))
        except TimeoutError:
            pass
    event.clear()


async def idle_until(signal: asyncio.Event, next_due: float | None, now: float, idle_wait: float) -> None:
    """Nothing to do now: wait for `signal` (new work), the next due time, or at most `idle_wait`."""
    await wait_for_signal(signal, idle_wait if next_due is None else min(idle_wait, next_due - now))


async def loop_forever(
    name: str, step: Callable[[], Awaitable[object]], *, interval: float = 0.0, pause_on_error: float = 1.0
) -> None:
    """Run `step` forever, `interval` seconds apart (0: back to back, the step waits for its own work).

    An unexpected error is logged and the loop goes on after `interval`, or `pause_on_error` when 0.
    """
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker step failed", extra={"worker": name})
            await asyncio.sleep(interval or pause_on_error)
            continue
        if interval:
            await asyncio.sleep(interval)


async def every(name: str, interval: float, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` now and then every `interval` seconds (a pass per interval: reconciler, progress, pruner)."""
    await loop_forever(name, step, interval=interval)


class CallBudget:
    """A ceiling on OpenAI calls per window, shared by the workers that poll OpenAI (reconciler, progress).

    The window restarts on the first `take()` after it ran out; `reserve` keeps that many calls for others.
    """

    def __init__(self, limit: int, window: float, now: Callable[[], float]) -> None:
        self.limit, self.window, self._now = limit, window, now
        self._started = now()
        self.used = 0

    def resets_at(self) -> float:
        """When the current window ends (calls refused now can be made from then on)."""
        return self._started + self.window

    def take(self, reserve: int = 0) -> bool:
        now = self._now()
        if now - self._started >= self.window:
            self._started, self.used = now, 0
        if self.used >= self.limit - reserve:
            return False
        self.used += 1
        return True
