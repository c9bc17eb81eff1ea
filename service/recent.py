"""Counts by key over a recent span of time (e.g. webhooks rejected in the last hour), kept in memory.

A ring of per-step buckets: adding is a dict increment, reading sums at most span/step buckets, and memory
is bounded by that many buckets times the keys (a closed set, such as the receiver's rejection codes).
What it counts is gone after a restart; `started_at` says since when it has been counting.
"""

from __future__ import annotations

from collections import deque


class RecentCounts:
    """Counts by key over the last `span` seconds, in buckets of `step` seconds (a sliding window)."""

    def __init__(self, started_at: float, span: float = 3600.0, step: float = 60.0) -> None:
        if span <= 0 or step <= 0:
            raise ValueError("span and step must be positive")
        self.started_at = started_at
        self.span = span
        self.step = step
        self._slots = max(1, round(span / step))
        self._buckets: deque[tuple[int, dict[str, int]]] = deque()

    def add(self, key: str, now: float, n: int = 1) -> None:
        slot = int(now // self.step)
        if not self._buckets or self._buckets[-1][0] < slot:
            self._buckets.append((slot, {}))
            self._drop_before(slot)
        # A clock that stepped back counts into the newest bucket rather than reordering the ring.
        counts = self._buckets[-1][1]
        counts[key] = counts.get(key, 0) + n

    def totals(self, now: float) -> dict[str, int]:
        """The counts by key of the last `span` seconds (the current step and the whole steps before it)."""
        first = int(now // self.step) - self._slots + 1
        out: dict[str, int] = {}
        for slot, counts in self._buckets:
            if slot >= first:
                for key, n in counts.items():
                    out[key] = out.get(key, 0) + n
        return out

    def _drop_before(self, slot: int) -> None:
        first = slot - self._slots + 1
        while self._buckets and self._buckets[0][0] < first:
            self._buckets.popleft()
