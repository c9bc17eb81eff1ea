"""Subscriptions: create, read, update, rotate, test and replay."""

from __future__ import annotations

import functools
import math
import sqlite3
from typing import Any

from service import ids
from service.domain import (
    matches_filter,
)
from service.domain.fanout import subscription_ordering_key
from service.store.records import (
    Subscription,
)
from service.store.sqlite.common import (
    _dumps,
)
from service.store.sqlite.rows import _subscription
from service.store.sqlite.writer import StoreCore


class SubscriptionQueries(StoreCore):
    """Subscriptions: create, read, update, rotate, test and replay."""

    # -- subscriptions ----------------------------------------------------------------------------

    async def create_subscription(
        self, *, url: str, event_types: list[str] | None, description: str | None, secret: str, ordered: bool
    ) -> Subscription:
        def op(c: sqlite3.Connection) -> Subscription:
            now = self.clock.now()
            sub_id = ids.subscription_id()
            c.execute(
                "INSERT INTO subscriptions (id, url, event_types, description, secret, enabled, ordered,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)",
                (
                    sub_id,
                    url,
                    _dumps(event_types),
                    description,
                    self._ops.seal_secret(secret, sub_id),
                    int(ordered),
                    now,
                    now,
                ),
            )
            self._ops.forget_subscriptions()
            return _subscription(
                c.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone(), self._ops.box
            )

        return await self._write(op)

    async def get_subscription(self, sub_id: str) -> Subscription | None:
        def read(c: sqlite3.Connection) -> Subscription | None:
            row = c.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone()
            return _subscription(row, self._ops.box) if row is not None else None

        return await self._read(read)

    async def list_subscriptions(
        self, limit: int | None = None, after: str | None = None
    ) -> list[Subscription]:
        """Subscriptions oldest first (ids sort by creation), those after `after`, at most `limit`."""
        return await self._read(
            lambda c: [
                _subscription(r, self._ops.box)
                for r in c.execute(
                    "SELECT * FROM subscriptions WHERE id > ? ORDER BY id LIMIT ?",
                    (after or "", -1 if limit is None else limit),
                ).fetchall()
            ]
        )

    async def update_subscription(self, sub_id: str, changes: dict[str, Any]) -> Subscription | None:
        allowed = {"url", "event_types", "description", "enabled", "ordered"}

        def op(c: sqlite3.Connection) -> Subscription | None:
            if c.execute("SELECT 1 FROM subscriptions WHERE id = ?", (sub_id,)).fetchone() is None:
                return None
            sets: dict[str, Any] = {}
            for name, value in changes.items():
                if name not in allowed:
                    continue
                if name == "event_types":
                    value = _dumps(value)
                elif name in ("enabled", "ordered"):
                    value = int(bool(value))
                sets[name] = value
            if changes.get("enabled") is True:
                sets["disabled_reason"] = None
                sets["failing_since"] = None
            sets["updated_at"] = self.clock.now()
            c.execute(
                f"UPDATE subscriptions SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                (*sets.values(), sub_id),
            )
            self._ops.forget_subscriptions()
            return _subscription(
                c.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone(), self._ops.box
            )

        return await self._write(op)

    async def delete_subscription(self, sub_id: str) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            cur = c.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))
            now = self.clock.now()
            c.execute(
                "UPDATE deliveries SET status = 'dead', next_attempt_at = NULL, last_error = ?, updated_at = ?"
                " WHERE subscription_id = ? AND status IN ('pending', 'failed')",
                ("subscription deleted", now, sub_id),
            )
            self._ops.forget_subscriptions()
            return cur.rowcount > 0

        return await self._write(op)

    async def rotate_secret(self, sub_id: str, new_secret: str, overlap: float) -> Subscription | None:
        def op(c: sqlite3.Connection) -> Subscription | None:
            now = self.clock.now()
            cur = c.execute(
                "UPDATE subscriptions SET previous_secret = secret, previous_secret_until = ?, secret = ?,"
                " updated_at = ? WHERE id = ?",
                (now + overlap, self._ops.seal_secret(new_secret, sub_id), now, sub_id),
            )
            if cur.rowcount == 0:
                return None
            self._ops.forget_subscriptions()
            return _subscription(
                c.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone(), self._ops.box
            )

        return await self._write(op)

    async def enqueue_test(self, sub_id: str) -> str | None:
        def op(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone()
            if row is None:
                return None
            sub = _subscription(row, self._ops.box)
            data = {"subscription_id": sub.id, "message": "This is a test event from sorahook."}
            if not sub.enabled:
                return None
            return self._ops.emit(c, "sorahook.test", data, source="api", only_subscription=sub.id)

        return await self._write(op)

    async def replay(
        self, sub_id: str, since: float, chunk: int = 1000, *, until: float | None = None
    ) -> int | None:
        """Enqueue again, for this subscription, every emitted event since `since` (and before `until`,
        when given) that matches its filter.

        In chunks of `chunk` events, each its own transaction, oldest first: a replay of months of events
        never holds the single writer (and every webhook waiting on it) for more than one chunk. None if
        the subscription does not exist.
        """
        total = 0
        cursor: tuple[float, str] = (since, "")
        while True:
            step = await self._write(
                functools.partial(self._replay_chunk, sub_id=sub_id, after=cursor, chunk=chunk, until=until)
            )
            if step is None:
                return None if total == 0 else total  # deleted mid-replay: what was enqueued stays
            enqueued, last = step
            total += enqueued
            if last is None:
                return total
            cursor = last

    def _replay_chunk(
        self, c: sqlite3.Connection, sub_id: str, after: tuple[float, str], chunk: int, until: float | None
    ) -> tuple[int, tuple[float, str] | None] | None:
        """One chunk of a replay: (deliveries enqueued, the last event's (created_at, id) or None at the end)."""
        row = c.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone()
        if row is None:
            return None
        sub = _subscription(row, self._ops.box)
        now = self.clock.now()
        events = c.execute(
            "SELECT e.id, e.type, e.job_id, e.created_at, j.sequence FROM events e"
            " LEFT JOIN jobs j ON j.id = e.job_id"
            " WHERE e.direction = 'emitted' AND e.created_at >= ? AND (e.created_at, e.id) > (?, ?)"
            " AND e.created_at < ? AND e.type != 'sorahook.test' ORDER BY e.created_at, e.id LIMIT ?",
            (after[0], after[0], after[1], math.inf if until is None else until, chunk),
        ).fetchall()
        rows = []
        for ev in events:
            if not matches_filter(ev["type"], sub.event_types):
                continue
            ordering = subscription_ordering_key(sub, ev["job_id"])
            rows.append(
                (
                    ids.delivery_id(),
                    ev["id"],
                    ev["type"],
                    sub.id,
                    ev["job_id"],
                    now,
                    ordering,
                    ev["sequence"],
                    ev["created_at"],
                    now,
                    now,
                )
            )
        c.executemany(
            "INSERT INTO deliveries (id, event_id, event_type, subscription_id, job_id, status,"
            " next_attempt_at, ordering_key, sequence, event_created_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
            rows,
        )
        if rows:
            self._ops.flag_deliveries = True
        last = (events[-1]["created_at"], events[-1]["id"]) if len(events) == chunk else None
        return len(rows), last
