"""The delivery worker: claims due outbox rows, signs and sends them, records every attempt.

Isolation: a global cap on sends in flight and a per-subscription cap; a subscription at its cap is
left out of the next claim, so one slow or failing subscriber never holds up the others' deliveries,
and the loop never waits for a batch to finish before claiming more (no head-of-line blocking).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from prometheus_client.metrics import Counter as CounterChild

from service.clock import Clock
from service.metrics import Metrics
from service.sender import Sender
from service.signing import Signer
from service.store.records import ClaimedDelivery, DeliveryStatus
from service.store.sqlite import DeliveryOutcome, SqliteStore
from service.workers import loop_forever, wait_for_signal

log = logging.getLogger("sorahook.delivery")

USER_AGENT = "sorahook/0.1 (+https://github.com/sorahook)"


class Deliverer:
    name = "deliverer"

    def __init__(
        self,
        *,
        store: SqliteStore,
        sender: Sender,
        clock: Clock,
        metrics: Metrics,
        timeout: float,
        concurrency: int = 64,
        per_subscription: int = 8,
        idle_wait: float = 1.0,
    ) -> None:
        self.store, self.sender, self.clock, self.metrics = store, sender, clock, metrics
        self.timeout = timeout
        self.concurrency = concurrency
        self.per_subscription = per_subscription
        self.idle_wait = idle_wait
        # A claim lasts well beyond one attempt's timeout, so a slow attempt is never sent twice at once.
        self.lease = timeout * 2 + 30.0
        self.signer = Signer()
        # Claimed and not yet sent to the end, per subscription (or callback URL) and in all.
        self._in_flight: Counter[str] = Counter()
        self._outstanding = 0
        # Claimed deliveries wait here for one of `concurrency` long-lived senders (no task per delivery);
        # at most `concurrency` are ever outstanding, so one is always free to take the next.
        self._ready: asyncio.Queue[ClaimedDelivery] = asyncio.Queue()
        self._outcomes: list[tuple[ClaimedDelivery, DeliveryOutcome]] = []
        self._slot_freed = asyncio.Event()  # a send ended: a slot is free and an outcome waits to be recorded
        self._idle = asyncio.Event()  # nothing outstanding (drain)
        self._idle.set()
        self._counted: dict[str, CounterChild] = {}

    def _busy(self) -> list[str]:
        return [sub for sub, n in self._in_flight.items() if n >= self.per_subscription]

    async def claim(self) -> list[ClaimedDelivery]:
        free = self.concurrency - self._outstanding
        if free <= 0:
            return []
        claimed = await self.store.claim_deliveries(free, self.lease, self._busy(), self.per_subscription)
        return await self._keep(claimed)

    async def _keep(self, claimed: list[ClaimedDelivery]) -> list[ClaimedDelivery]:
        """Count the claimed deliveries in flight; give back those over their subscription's cap."""
        # The claim may hold more rows of one subscription than its cap allows: keep the rest for later.
        in_flight = self._in_flight
        kept: list[ClaimedDelivery] = []
        released: list[ClaimedDelivery] = []
        for item in claimed:
            key = item.subscription_id or item.url
            if in_flight[key] >= self.per_subscription:
                released.append(item)
                continue
            # Counted before it is sent, so the very next claim already sees this subscription busy.
            in_flight[key] += 1
            kept.append(item)
        self._outstanding += len(kept)
        if kept:
            self._idle.clear()
        if released:
            await self.store.release_deliveries([r.id for r in released])
        return kept

    async def send(self, item: ClaimedDelivery) -> DeliveryOutcome:
        timestamp = int(self.clock.now())
        headers = self.signer.headers(item.event_id, timestamp, item.body, item.secrets)
        headers["user-agent"] = USER_AGENT
        result = await self.sender.send(item.url, headers, item.body.encode(), self.timeout)
        return DeliveryOutcome(
            delivery_id=item.id,
            status_code=result.status_code,
            error=result.error,
            latency=result.latency,
            retry_after=result.retry_after,
        )

    async def _deliver(self, item: ClaimedDelivery) -> None:
        """Send one claimed delivery and leave its outcome for the next store write."""
        try:
            try:
                outcome = await self.send(item)
            except Exception as exc:  # the sender never raises for network problems; this is a bug guard
                log.exception("delivery send crashed", extra={"delivery_id": item.id})
                outcome = DeliveryOutcome(item.id, None, f"internal error: {type(exc).__name__}", 0.0)
            # The slot is free as soon as the send ends; the row's lease keeps it from being claimed
            # again until the attempt is recorded (many attempts per write, with the next claim).
            self._outcomes.append((item, outcome))
        finally:
            key = item.subscription_id or item.url
            left = self._in_flight[key] - 1
            if left <= 0:
                del self._in_flight[key]
            else:
                self._in_flight[key] = left
            self._outstanding -= 1
            if self._outstanding <= 0:
                self._idle.set()
            self._slot_freed.set()

    async def _sender(self) -> None:
        ready = self._ready
        while True:
            item = await ready.get()
            await self._deliver(item)

    async def flush(self) -> int:
        """Record every finished attempt in one store write; returns how many."""
        batch, self._outcomes = self._outcomes, []
        if not batch:
            return 0
        self._observe_all(batch, await self.store.record_attempts([outcome for _, outcome in batch]))
        return len(batch)

    def _observe_all(
        self,
        batch: list[tuple[ClaimedDelivery, DeliveryOutcome]],
        recorded: list[tuple[str, DeliveryStatus]],
    ) -> None:
        results = dict(recorded)
        for item, outcome in batch:
            self._observe(item, outcome, results.get(item.id))

    def _count(self, status: DeliveryStatus) -> CounterChild:
        child = self._counted.get(status)
        if child is None:
            child = self._counted[status] = self.metrics.deliveries.labels(outcome=status)
        return child

    def _observe(
        self, item: ClaimedDelivery, outcome: DeliveryOutcome, status: DeliveryStatus | None
    ) -> None:
        self.metrics.delivery_attempt_duration.observe(outcome.latency)
        if status is None:
            return
        self._count(status).inc()
        if status == "succeeded":
            self.metrics.event_to_delivery.observe(max(0.0, self.clock.now() - item.event_created_at))
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "delivery attempt",
                extra={
                    "delivery_id": item.id,
                    "event_id": item.event_id,
                    "subscription_id": item.subscription_id,
                    "job_id": item.job_id,
                    "status_code": outcome.status_code,
                    "outcome": status,
                },
            )

    async def run_once(self) -> int:
        """Claim what is due and deliver it, waiting for those sends (tests and benchmarks)."""
        items = await self.claim()
        if items:
            await asyncio.gather(*(self._deliver(item) for item in items))
            await self.flush()
        return len(items)

    async def _record_and_claim(self) -> list[ClaimedDelivery]:
        """Record the finished attempts and claim for the free slots, both in the store's next commit.

        The two writes are queued together, record first, so the group-commit writer runs them in one
        transaction (one fsync) and the claim already sees what was recorded (an ordered subscription's
        next event). A failed record is logged: those attempts stay leased and are sent again when the
        lease runs out (at least once).
        """
        batch, self._outcomes = self._outcomes, []
        free = self.concurrency - self._outstanding
        recording = self.store.record_attempts([o for _, o in batch]) if batch else None
        claiming = (
            self.store.claim_deliveries(free, self.lease, self._busy(), self.per_subscription)
            if free > 0
            else None
        )
        if recording is not None and claiming is not None:
            recorded, claimed = await asyncio.gather(recording, claiming, return_exceptions=True)
        elif recording is not None:
            recorded, claimed = await _settle(recording), []
        elif claiming is not None:
            recorded, claimed = None, await claiming
        else:
            return []
        if isinstance(recorded, BaseException):
            if not isinstance(recorded, Exception):
                raise recorded
            log.error("recording delivery attempts failed", exc_info=recorded)
        elif recorded is not None:
            self._observe_all(batch, recorded)
        if isinstance(claimed, BaseException):
            raise claimed
        return await self._keep(claimed)

    async def _step(self) -> None:
        items = await self._record_and_claim()
        for item in items:
            self._ready.put_nowait(item)
        if self._outcomes:
            return  # sends ended during that write: record them (and claim for their slots) at once
        if items and self._outstanding < self.concurrency:
            return
        if self._outstanding >= self.concurrency:
            await wait_for_signal(self._slot_freed, self.idle_wait)
            return
        next_at = await self.store.next_delivery_at()
        wait = self.idle_wait if next_at is None else min(self.idle_wait, next_at - self.clock.now())
        if wait <= 0:
            # Rows are due but none could be claimed: their subscriptions are at their cap, or an ordered
            # event waits for an earlier one. Sleep until a slot frees, an attempt is recorded or work comes.
            wait = self.idle_wait
        await self._wait_either(wait)

    async def _wait_either(self, timeout: float) -> None:
        """Wake on new work, on a freed slot (a busy subscription may now be claimable) or on the timeout."""
        if self._outcomes:
            return
        new_work = asyncio.ensure_future(self.store.signals.deliveries.wait())
        freed = asyncio.ensure_future(self._slot_freed.wait())
        try:
            await asyncio.wait({new_work, freed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            new_work.cancel()
            freed.cancel()
        self.store.signals.deliveries.clear()
        self._slot_freed.clear()

    async def run(self) -> None:
        senders = [
            asyncio.create_task(self._sender(), name="sorahook-delivery-sender")
            for _ in range(self.concurrency)
        ]
        try:
            await loop_forever(self.name, self._step)
        finally:
            await self.drain(5.0)
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            await self.flush()

    async def drain(self, timeout: float) -> None:
        """Let sends in flight finish (bounded); the rest keep their lease and are released at next start."""
        if self._outstanding > 0:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                pass


async def _settle(recording: Awaitable[list[tuple[str, DeliveryStatus]]]) -> Any:
    """The record's result, or the exception it raised (as `gather(..., return_exceptions=True)` gives)."""
    try:
        return await recording
    except Exception as exc:
        return exc
