"""The processor: applies acknowledged webhooks from the inbox to their jobs, in batches, in order.

The receiver answers 200 once a webhook's inbox row is committed; this worker then applies those
rows through the planner (job, timeline, outbox and archive rows, one transaction per batch), oldest
first, so each resource's webhooks apply in the order they came. The commit that adds inbox rows
sets `signals.inbox` and wakes it at once; `poll` is only the fallback. Rows left by a crash are
still in the inbox, so the next start applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from service.clock import Clock
from service.store.protocol import InboxStore, StoreLifecycle
from service.workers import loop_forever, wait_for_signal

BATCH = 512  # rows per transaction: as many as the writer takes in one group commit
POLL = 1.0  # seconds between looks at the inbox when no commit woke us


class ProcessorStore(InboxStore, StoreLifecycle, Protocol):
    """What the processor needs: the inbox, and the signal its commits raise."""


class Processor:
    name = "processor"

    def __init__(
        self,
        *,
        store: ProcessorStore,
        clock: Clock,
        batch: int = BATCH,
        poll: float = POLL,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self.store, self.clock = store, clock
        self.batch, self.poll = batch, poll
        self.on_lag = on_lag  # seconds from acknowledgement to applied, per webhook
        self._applied = asyncio.Event()  # set after each batch, for idle()

    async def run_once(self) -> int:
        """Apply one batch of the oldest inbox rows; how many were applied."""
        received = await self.store.process_inbox(self.batch)
        self._applied.set()
        if received and self.on_lag is not None:
            now = self.clock.now()
            for at in received:
                self.on_lag(max(0.0, now - at))
        return len(received)

    async def run(self) -> None:
        await loop_forever(self.name, self._step)

    async def _step(self) -> None:
        if await self.run_once() < self.batch:  # drained: sleep until a commit adds rows
            await wait_for_signal(self.store.signals.inbox, self.poll)

    async def idle(self) -> None:
        """Return once the inbox is empty: every webhook acknowledged so far has been applied."""
        while await self.store.inbox_depth():
            self._applied.clear()
            with contextlib.suppress(TimeoutError):  # the batch may have landed between the two
                await asyncio.wait_for(self._applied.wait(), timeout=self.poll)
