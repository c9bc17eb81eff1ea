"""Retention: prunes old events, deliveries and attempts in small batches so the database stays bounded."""

from __future__ import annotations

import asyncio
import logging

from service.clock import Clock
from service.store.protocol import RetentionStore
from service.workers import every

log = logging.getLogger("sorahook.retention")


class Pruner:
    name = "pruner"

    def __init__(
        self, *, store: RetentionStore, clock: Clock, keep: float, interval: float = 3600.0, batch: int = 200
    ) -> None:
        self.store, self.clock = store, clock
        self.keep, self.interval, self.batch = keep, interval, batch

    async def run_once(self) -> int:
        """Prune until nothing old is left, one small transaction at a time (writers interleave)."""
        cutoff = self.clock.now() - self.keep
        total = 0
        while True:
            removed = await self.store.prune(cutoff, self.batch)
            total += removed
            if removed == 0:
                break
            await asyncio.sleep(0)
        if total:
            log.info("pruned old history", extra={"rows": total})
        return total

    async def run(self) -> None:
        await every(self.name, self.interval, self.run_once)
