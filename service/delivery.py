"""The delivery worker: claims due outbox rows, signs and sends them, records every attempt.

Isolation: a global cap on sends in flight and a per-subscription cap; a subscription at its cap is
left out of the next claim, so one slow or failing subscriber never holds up the others' deliveries,
and the loop never waits for a batch to finish before claiming more (no head-of-line blocking).
The per-subscription cap is learned (`AdaptiveLimits`): a new endpoint starts at one send and gains one
per answer; a timeout or connection error drops it back to one and makes it slow. Slow endpoints (and
new ones, until their first answer) together hold at most `slow_share` of the sends, so however many
hang, the endpoints that answer keep the rest.

Pipelining: deliveries are claimed a little ahead of the senders (up to `concurrency` more in all and
`per_subscription` more per subscription, leased and waiting in a queue with a per-subscription cap),
so a sender that finishes starts the next delivery at once instead of waiting for a claim's commit;
finished attempts are recorded in the same commit as the next claim.

The loop: `run_once()` is one step (record what the senders finished, claim for the free room, queue the
claims); `wait_for_work()` sleeps until another step can do something; `run()` repeats the two and
stops the senders when cancelled. The `concurrency` senders are long-lived tasks fed by the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from prometheus_client.metrics import Counter as CounterChild

from service.clock import Clock
from service.dispatch import AdaptiveLimits, CappedQueue, QueueClosed
from service.metrics import Metrics
from service.sender import Sender
from service.signing import Signer
from service.store.protocol import Store
from service.store.records import ClaimedDelivery, DeliveryOutcome, DeliveryStatus
from service.workers import loop_forever, wait_for_signal

log = logging.getLogger("sorahook.delivery")

USER_AGENT = "sorahook/0.1 (+https://github.com/sorahook)"

# A claimed delivery that waited in the queue so long that its lease could run out before its attempt is
# recorded is given back instead of sent (never two sends of one delivery at once).
_LEASE_MARGIN = 10.0
# Learned limits kept for at most this many idle endpoints (callback URLs are one each).
_REMEMBERED_KEYS = 4096


class Deliverer:
    name = "deliverer"

    def __init__(
        self,
        *,
        store: Store,
        sender: Sender,
        clock: Clock,
        metrics: Metrics,
        timeout: float,
        concurrency: int = 64,
        per_subscription: int = 8,
        slow_share: float = 0.5,
        idle_wait: float = 1.0,
    ) -> None:
        self.store, self.sender, self.clock, self.metrics = store, sender, clock, metrics
        self.timeout = timeout
        self.concurrency = concurrency
        self.per_subscription = per_subscription
        # Sends that slow endpoints (stalled on their last attempt, or new) may hold at once, over all of them.
        self.slow_cap = max(1, int(concurrency * slow_share))
        self.limits = AdaptiveLimits(per_subscription)
        self.idle_wait = idle_wait
        # A claim lasts well beyond one attempt's timeout, so a slow attempt is never sent twice at once.
        self.lease = timeout * 2 + 30.0
        self.max_queued_for = self.lease - timeout - _LEASE_MARGIN
        self.signer = Signer()
        # Claimed and not yet finished (waiting or sending), in all and per subscription (or callback URL).
        self.claim_limit = concurrency * 2
        self._claimed: Counter[str] = Counter()
        self._outstanding = 0
        # Claimed deliveries (with their claim time) wait here for one of `concurrency` long-lived senders.
        self._queue: CappedQueue[tuple[float, ClaimedDelivery]] = CappedQueue(per_subscription, self.slow_cap)
        self._outcomes: list[tuple[ClaimedDelivery, DeliveryOutcome]] = []
        self._slot_freed = asyncio.Event()  # a delivery finished: room to claim, an outcome to record
        self._idle = asyncio.Event()  # nothing claimed is outstanding (drain)
        self._idle.set()
        self._counted: dict[str, CounterChild] = {}
        self._senders: list[asyncio.Task[None]] = []  # `concurrency` long-lived tasks, started by run_once

    def in_flight(self, key: str) -> int:
        """Sends of this subscription (or callback URL) under way now."""
        return self._queue.taken(key)

    def _share(self, key: str) -> int:
        """Deliveries a key may have claimed: its limit sending and as many waiting (a slow one: none)."""
        limit = self.limits.limit(key)
        return limit if self.limits.is_slow(key) else 2 * limit

    def _room(self, key: str) -> int:
        return self._share(key) - self._claimed.get(key, 0)

    def _busy(self) -> list[str]:
        # Left out of the claim: at their share already.
        return [key for key in self._claimed if self._room(key) <= 0]

    def _apply_limits(self, key: str) -> None:
        """Hand what was learned about a key to the queue that paces its sends."""
        self._queue.set_limit(key, self.limits.limit(key))
        self._queue.set_slow(key, self.limits.is_slow(key))

    def _learn(self, key: str, outcome: DeliveryOutcome) -> None:
        if outcome.status_code is None:
            self.limits.stalled(key)
        else:
            self.limits.answered(key)
        self._apply_limits(key)

    async def claim(self, limit: int | None = None) -> list[ClaimedDelivery]:
        free = (self.claim_limit if limit is None else limit) - self._outstanding
        if free <= 0:
            return []
        claimed = await self.store.claim_deliveries(
            free, self.lease, self._busy(), self.per_subscription, self._room
        )
        return await self._keep(claimed)

    async def _keep(self, claimed: list[ClaimedDelivery]) -> list[ClaimedDelivery]:
        """Count the claimed deliveries as outstanding; give back those past their subscription's share."""
        # A claim may hold more rows of one callback URL than its share: keep the rest for later.
        counts = self._claimed
        kept: list[ClaimedDelivery] = []
        released: list[ClaimedDelivery] = []
        for item in claimed:
            key = item.cap_key
            n = counts[key]
            if n >= self._share(key):
                released.append(item)
                continue
            if n == 0:
                self._apply_limits(key)
            # Counted before it is sent, so the very next claim already sees this subscription busy.
            counts[key] = n + 1
            kept.append(item)
        self._outstanding += len(kept)
        if kept:
            self._idle.clear()
        if released:
            await self.store.release_deliveries([r.id for r in released])
        return kept

    def _finish(self, key: str) -> None:
        left = self._claimed[key] - 1
        if left <= 0:
            del self._claimed[key]
            if len(self.limits) > _REMEMBERED_KEYS:
                self.limits.forget(key)
                self._queue.set_limit(key, self.per_subscription)  # the queue forgets it too
                self._queue.set_slow(key, False)
        else:
            self._claimed[key] = left
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._idle.set()
        self._slot_freed.set()

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
            response_body=result.body.decode("utf-8", "replace") if result.body else None,
        )

    async def _deliver(self, item: ClaimedDelivery) -> DeliveryOutcome:
        """Send one claimed delivery and leave its outcome for the next store write."""
        try:
            outcome = await self.send(item)
        except Exception as exc:  # the sender never raises for network problems; this is a bug guard
            log.exception("delivery send crashed", extra={"delivery_id": item.id})
            outcome = DeliveryOutcome(item.id, None, f"internal error: {type(exc).__name__}", 0.0)
        # The slot is free as soon as the send ends; the row's lease keeps it from being claimed
        # again until the attempt is recorded (many attempts per write, with the next claim).
        self._outcomes.append((item, outcome))
        return outcome

    async def _sender(self) -> None:
        queue = self._queue
        while True:
            try:
                key, (claimed_at, item) = await queue.get()
            except QueueClosed:
                return
            try:
                if self.clock.now() - claimed_at > self.max_queued_for:
                    await self._give_back([item])
                else:
                    self._learn(key, await self._deliver(item))
            finally:
                queue.done(key)
                self._finish(key)

    async def _give_back(self, items: list[ClaimedDelivery]) -> None:
        """Release claimed deliveries that will not be sent now: due again at once, no attempt counted."""
        try:
            await self.store.release_deliveries([item.id for item in items])
        except Exception:  # their lease runs out instead, and they are sent then
            log.exception("releasing claimed deliveries failed")

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
            child = self._counted[status] = self.metrics.delivery_attempts.labels(outcome=status)
        return child

    def _observe(
        self, item: ClaimedDelivery, outcome: DeliveryOutcome, status: DeliveryStatus | None
    ) -> None:
        self.metrics.delivery_attempt_duration.observe(outcome.latency)
        if status is None:
            return
        self._count(status).inc()
        self.metrics.count_finished(status)
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

    async def _record_and_claim(self) -> list[ClaimedDelivery]:
        """Record the finished attempts and claim for the free room, both in the store's next commit.

        The two writes are queued together, record first, so the group-commit writer runs them in one
        transaction (one fsync) and the claim already sees what was recorded (an ordered subscription's
        next event). A failed record is logged: those attempts stay leased and are sent again when the
        lease runs out (at least once).
        """
        batch, self._outcomes = self._outcomes, []
        free = self.claim_limit - self._outstanding
        recording = self.store.record_attempts([o for _, o in batch]) if batch else None
        claiming = (
            self.store.claim_deliveries(free, self.lease, self._busy(), self.per_subscription, self._room)
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

    async def run_once(self) -> int:
        """One step: record the finished attempts, claim for the free room, queue the claims for the senders.

        Returns how many deliveries were claimed. Starts the senders on first use, so a test can drive the
        worker step by step (with an injected clock) and `stop()` it at the end.
        """
        self._start_senders()
        items = await self._record_and_claim()
        if items:
            claimed_at = self.clock.now()
            for item in items:
                self._queue.put(item.cap_key, (claimed_at, item))
        return len(items)

    async def wait_for_work(self, claimed: int) -> None:
        """Between steps: return at once while there is more to do, else sleep until there may be."""
        if self._outcomes:
            return  # sends ended during the last write: record them (and claim for their room) at once
        if claimed and self._outstanding < self.claim_limit:
            return
        if self._outstanding >= self.claim_limit:
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
        """Step and wait, until cancelled; then let the sends in flight finish and record them."""

        async def step() -> None:
            await self.wait_for_work(await self.run_once())

        try:
            await loop_forever(self.name, step)
        finally:
            await self.stop()

    def _start_senders(self) -> None:
        if not self._senders:
            # A fresh queue: a stopped worker's queue is closed (drain gave its waiting claims back).
            self._queue = CappedQueue(self.per_subscription, self.slow_cap)
            self._senders = [
                asyncio.create_task(self._sender(), name="sorahook-delivery-sender")
                for _ in range(self.concurrency)
            ]

    async def stop(self, timeout: float = 5.0) -> None:
        """Drain (bounded by `timeout`), stop the senders and record what they finished."""
        await self.drain(timeout)
        senders, self._senders = self._senders, []
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await self.flush()

    async def drain(self, timeout: float) -> None:
        """Start no more sends and give the waiting deliveries back; let sends in flight finish (bounded).

        Those still unfinished keep their lease and are released at the next start.
        """
        waiting = [item for _, item in self._queue.close()]
        for item in waiting:
            self._finish(item.cap_key)
        if waiting:
            await self._give_back(waiting)
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
