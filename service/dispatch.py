"""A work queue with a cap per key: the deliverer's buffer of claimed deliveries in front of its senders.

`get()` hands out the oldest item of the next key (round robin) that has fewer items handed out and not
yet `done()` than its limit, so a slow key holds at most its limit of takers and never delays the
others' items. Limits change per key (`set_limit`), and keys marked slow (`set_slow`) share a pool of
at most `slow_cap` takers between them, so however many keys hang, the others keep the rest.

`AdaptiveLimits` decides those limits from what each key's sends do: a key that times out or cannot be
reached drops to one send at a time and counts as slow; every answer it gives adds one back. A key that
has not answered yet counts as slow too, so a crowd of new endpoints that all hang cannot take the
slots of the ones already proven healthy.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosed(Exception):
    """The queue was closed: no more items are handed out."""


class CappedQueue(Generic[T]):
    def __init__(self, per_key: int, slow_cap: int | None = None) -> None:
        if per_key < 1:
            raise ValueError("per_key must be at least 1")
        if slow_cap is not None and slow_cap < 1:
            raise ValueError("slow_cap must be at least 1")
        self.per_key = per_key
        self.slow_cap: float = math.inf if slow_cap is None else slow_cap
        self._items: dict[str, deque[T]] = {}
        self._taken: Counter[str] = Counter()  # handed out and not yet done, per key
        self._limits: dict[str, int] = {}  # keys whose limit is not per_key
        self._slow: set[str] = set()
        self._slow_taken = 0  # handed out and not yet done, over every slow key
        # Keys with items waiting and room under their limit, each in the deque for its class (normal or
        # slow). A key's entry carries a token; `_ready` holds the live token, so an entry left behind
        # when a key stops being runnable (or changes class) is skipped instead of searched for.
        self._runnable: deque[tuple[str, int]] = deque()
        self._runnable_slow: deque[tuple[str, int]] = deque()
        self._ready: dict[str, int] = {}
        self._tokens = itertools.count()
        self._slow_turn = False  # alternate between the classes while both can hand out
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._queued = 0
        self._closed = False

    def __len__(self) -> int:
        """Items waiting (not handed out)."""
        return self._queued

    def taken(self, key: str) -> int:
        return self._taken.get(key, 0)

    def limit(self, key: str) -> int:
        return self._limits.get(key, self.per_key)

    def is_slow(self, key: str) -> bool:
        return key in self._slow

    @property
    def slow_taken(self) -> int:
        return self._slow_taken

    def set_limit(self, key: str, limit: int) -> None:
        """Hand out at most `limit` (at least 1) items of `key` at once from now on."""
        limit = max(1, limit)
        if limit == self.per_key:
            self._limits.pop(key, None)
        else:
            self._limits[key] = limit
        self._sync(key)

    def set_slow(self, key: str, slow: bool) -> None:
        """Count `key` in the slow pool (at most `slow_cap` handed out over all slow keys) or not."""
        if slow == (key in self._slow):
            return
        taken = self._taken.get(key, 0)
        if slow:
            self._slow.add(key)
            self._slow_taken += taken
        else:
            self._slow.discard(key)
            self._slow_taken -= taken
            if self._runnable_slow:
                self._wake_one()  # room in the slow pool
        self._ready.pop(key, None)  # its entry, if any, is in the other class's deque now
        self._sync(key)

    def put(self, key: str, item: T) -> None:
        if self._closed:
            raise QueueClosed("the queue is closed")
        waiting = self._items.get(key)
        if waiting is None:
            waiting = self._items[key] = deque()
        waiting.append(item)
        self._queued += 1
        if len(waiting) == 1:
            self._sync(key)

    async def get(self) -> tuple[str, T]:
        """The next item and its key; the caller must call `done(key)` when it has finished with it."""
        while True:
            if self._closed:
                raise QueueClosed("the queue is closed")
            key = self._pick()
            if key is not None:
                break
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
        waiting = self._items[key]
        item = waiting.popleft()
        self._queued -= 1
        self._taken[key] = self._taken.get(key, 0) + 1
        if key in self._slow:
            self._slow_taken += 1
        if not waiting:
            del self._items[key]
        self._sync(key, wake=False)  # the wake-up below covers it
        if self._runnable or (self._runnable_slow and self._slow_taken < self.slow_cap):
            self._wake_one()  # one wake-up per put: pass it on while there is more to take
        return key, item

    def done(self, key: str) -> None:
        """An item of `key` handed out by `get()` is finished: the key may hand out another."""
        taken = self._taken[key] - 1
        if taken <= 0:
            del self._taken[key]
        else:
            self._taken[key] = taken
        if key in self._slow:
            self._slow_taken -= 1
            if self._runnable_slow and self._slow_taken < self.slow_cap:
                self._wake_one()
        self._sync(key)

    def close(self) -> list[T]:
        """Stop handing out items; wake every taker (they get QueueClosed) and return the items left."""
        self._closed = True
        left = [item for waiting in self._items.values() for item in waiting]
        self._items.clear()
        self._runnable.clear()
        self._runnable_slow.clear()
        self._ready.clear()
        self._queued = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        return left

    def _sync(self, key: str, *, wake: bool = True) -> None:
        """Make `key` runnable if it has items waiting and room under its limit; forget it otherwise."""
        runnable = key in self._items and self._taken.get(key, 0) < self._limits.get(key, self.per_key)
        if not runnable:
            self._ready.pop(key, None)
            return
        if key in self._ready:
            return
        token = next(self._tokens)
        self._ready[key] = token
        (self._runnable_slow if key in self._slow else self._runnable).append((key, token))
        if wake:
            self._wake_one()

    def _pick(self) -> str | None:
        """The next runnable key, taken off its deque: the classes alternate while both can hand out."""
        slow_open = self._slow_taken < self.slow_cap
        if slow_open and self._slow_turn:
            key = self._pop(self._runnable_slow)
            if key is not None:
                self._slow_turn = False
                return key
        key = self._pop(self._runnable)
        if key is not None:
            self._slow_turn = True
            return key
        if slow_open:
            key = self._pop(self._runnable_slow)
            if key is not None:
                self._slow_turn = False
            return key
        return None

    def _pop(self, runnable: deque[tuple[str, int]]) -> str | None:
        while runnable:
            key, token = runnable.popleft()
            if self._ready.get(key) == token:
                del self._ready[key]
                return key
        return None

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class AdaptiveLimits:
    """Per key sends in flight, learned from outcomes (additive increase, drop to one on a stall).

    A key starts at `start` (one, by default: a new endpoint proves itself before it may hold more
    slots) and counts as slow until its first answer; it gains one with every answer up to `maximum`.
    A timeout or connection error drops it to one and makes it slow until it answers again.
    """

    def __init__(self, maximum: int, start: int = 1) -> None:
        self.maximum = maximum
        self.start = max(1, min(start, maximum))
        self._limits: dict[str, int] = {}
        self._slow: set[str] = set()

    def limit(self, key: str) -> int:
        return self._limits.get(key, self.start)

    def is_slow(self, key: str) -> bool:
        """Stalled on its last send, or never answered yet."""
        return key in self._slow or key not in self._limits

    def answered(self, key: str) -> int:
        """The key answered (any HTTP status): one more send allowed, up to the maximum."""
        self._slow.discard(key)
        limit = min(self.maximum, self.limit(key) + 1)
        self._limits[key] = limit
        return limit

    def stalled(self, key: str) -> int:
        """No answer (timeout, connection error): one send at a time, and slow."""
        self._slow.add(key)
        self._limits[key] = 1
        return 1

    def forget(self, key: str) -> None:
        """Forget what was learned about a key (to bound memory): it starts afresh when it comes back."""
        self._limits.pop(key, None)
        self._slow.discard(key)

    def __len__(self) -> int:
        return len(self._limits)
