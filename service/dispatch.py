"""A work queue with a cap per key: the deliverer's buffer of claimed deliveries in front of its senders.

`get()` hands out the oldest item of the next key (round robin) that has fewer than `per_key` items
handed out and not yet `done()`, so a slow key holds at most `per_key` takers and never delays the
others' items.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosed(Exception):
    """The queue was closed: no more items are handed out."""


class CappedQueue(Generic[T]):
    def __init__(self, per_key: int) -> None:
        if per_key < 1:
            raise ValueError("per_key must be at least 1")
        self.per_key = per_key
        self._items: dict[str, deque[T]] = {}
        self._taken: Counter[str] = Counter()  # handed out and not yet done, per key
        # Keys with items waiting and fewer than per_key taken; each key at most once.
        self._runnable: deque[str] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._queued = 0
        self._closed = False

    def __len__(self) -> int:
        """Items waiting (not handed out)."""
        return self._queued

    def taken(self, key: str) -> int:
        return self._taken.get(key, 0)

    def put(self, key: str, item: T) -> None:
        if self._closed:
            raise QueueClosed("the queue is closed")
        waiting = self._items.get(key)
        if waiting is None:
            waiting = self._items[key] = deque()
        waiting.append(item)
        self._queued += 1
        if len(waiting) == 1 and self._taken.get(key, 0) < self.per_key:
            self._runnable.append(key)
            self._wake_one()

    async def get(self) -> tuple[str, T]:
        """The next item and its key; the caller must call `done(key)` when it has finished with it."""
        while not self._runnable:
            if self._closed:
                raise QueueClosed("the queue is closed")
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # the wake-up meant for this taker goes to another
                else:
                    self._waiters.remove(waiter)
                raise
        if self._closed:
            raise QueueClosed("the queue is closed")
        key = self._runnable.popleft()
        waiting = self._items[key]
        item = waiting.popleft()
        self._queued -= 1
        taken = self._taken[key] = self._taken.get(key, 0) + 1
        if not waiting:
            del self._items[key]
        elif taken < self.per_key:
            self._runnable.append(key)
        if self._runnable:
            self._wake_one()  # one wake-up per put: pass it on while there is more to take
        return key, item

    def done(self, key: str) -> None:
        """An item of `key` handed out by `get()` is finished: the key may hand out another."""
        taken = self._taken[key] - 1
        if taken <= 0:
            del self._taken[key]
        else:
            self._taken[key] = taken
        if taken == self.per_key - 1 and key in self._items:
            self._runnable.append(key)
            self._wake_one()

    def close(self) -> list[T]:
        """Stop handing out items; wake every taker (they get QueueClosed) and return the items left."""
        self._closed = True
        left = [item for waiting in self._items.values() for item in waiting]
        self._items.clear()
        self._runnable.clear()
        self._queued = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        return left

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
