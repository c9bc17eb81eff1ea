"""The delivery worker: claims due outbox rows, signs and sends them, records every attempt.

Isolation: a global cap on sends in flight and a per-subscription cap; a subscription at its cap is
left out of the next claim, so one slow or failing subscriber never holds up the others' deliveries,
and the loop never waits for a batch to finish before claiming more (no head-of-line blocking).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

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
        self._in_flight: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._outcomes: list[tuple[ClaimedDelivery, DeliveryOutcome]] = []
        self._have_outcomes = asyncio.Event()

    def _busy(self) -> list[str]:
        return [sub for sub, n in self._in_flight.items() if n >= self.per_subscription]

    async def claim(self) -> list[ClaimedDelivery]:
        free = self.concurrency - len(self._tasks)
        if free <= 0:
            return []
        claimed = await self.store.claim_deliveries(free, self.lease, self._busy(), self.per_subscription)
        # The claim may hold more rows of one subscription than its cap allows: keep the rest for later.
        counts = Counter(self._in_flight)
        kept: list[ClaimedDelivery] = []
        released: list[ClaimedDelivery] = []
        for item in claimed:
            key = item.subscription_id or item.url
            if counts[key] >= self.per_subscription:
                released.append(item)
                continue
            counts[key] += 1
            kept.append(item)
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

    def _start(self, item: ClaimedDelivery) -> asyncio.Task[None]:
        # Counted before the task first runs, so the very next claim already sees this subscription busy.
        self._in_flight[item.subscription_id or item.url] += 1
        task = asyncio.create_task(self._deliver(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, item: ClaimedDelivery) -> None:
        key = item.subscription_id or item.url
        try:
            try:
                outcome = await self.send(item)
            except Exception as exc:  # the sender never raises for network problems; this is a bug guard
                log.exception("delivery send crashed", extra={"delivery_id": item.id})
                outcome = DeliveryOutcome(item.id, None, f"internal error: {type(exc).__name__}", 0.0)
            # The slot is free as soon as the send ends; the row's lease keeps it from being claimed
            # again until the recorder has written the attempt (many attempts per write).
            self._outcomes.append((item, outcome))
            self._have_outcomes.set()
        finally:
            self._in_flight[key] -= 1
            if self._in_flight[key] <= 0:
                del self._in_flight[key]
            self._slot_freed.set()

    async def flush(self) -> int:
        """Record every finished attempt in one store write; returns how many."""
        batch, self._outcomes = self._outcomes, []
        self._have_outcomes.clear()
        if not batch:
            return 0
        results = dict(await self.store.record_attempts([outcome for _, outcome in batch]))
        for item, outcome in batch:
            status = results.get(item.id)
            self._observe(item, outcome, [(item.id, status)] if status else [])
        self._slot_freed.set()  # a recorded attempt may unblock an ordered subscription's next event
        return len(batch)

    async def _record_loop(self) -> None:
        while True:
            await self._have_outcomes.wait()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The attempts stay leased; their lease runs out and they are sent again (at least once).
                log.exception("recording delivery attempts failed")
                await asyncio.sleep(1.0)

    def _observe(
        self, item: ClaimedDelivery, outcome: DeliveryOutcome, results: list[tuple[str, DeliveryStatus]]
    ) -> None:
        self.metrics.delivery_attempt_duration.observe(outcome.latency)
        for _, status in results:
            self.metrics.deliveries.labels(outcome=status).inc()
            if status == "succeeded":
                self.metrics.event_to_delivery.observe(max(0.0, self.clock.now() - item.event_created_at))
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
            await asyncio.gather(*(self._start(item) for item in items))
            await self.flush()
        return len(items)

    async def _step(self) -> None:
        items = await self.claim()
        for item in items:
            self._start(item)
        if items and len(self._tasks) < self.concurrency:
            return
        if len(self._tasks) >= self.concurrency:
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
        recorder = asyncio.create_task(self._record_loop(), name="sorahook-delivery-recorder")
        try:
            await loop_forever(self.name, self._step)
        finally:
            await self.drain(5.0)
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
            await self.flush()

    async def drain(self, timeout: float) -> None:
        """Let sends in flight finish (bounded); the rest keep their lease and are released at next start."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
