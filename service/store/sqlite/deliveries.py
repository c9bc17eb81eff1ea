"""Deliveries: claims, attempts, listings and manual retries."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from service.store.records import (
    ClaimedDelivery,
    Delivery,
    DeliveryOutcome,
    DeliveryStatus,
)
from service.store.sqlite.rows import _with_attempts
from service.store.sqlite.writer import StoreCore


class DeliveryQueries(StoreCore):
    """Deliveries: claims, attempts, listings and manual retries."""

    # -- deliveries -------------------------------------------------------------------------------

    async def claim_deliveries(
        self,
        limit: int,
        lease: float,
        busy: Iterable[str] = (),
        per_key: int | None = None,
        room: Callable[[str], int] | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries; `busy` keys are skipped, `room(key)` caps a key's take."""
        busy_list = list(busy)
        return await self._write(
            lambda c: self._ops.claim_deliveries(c, limit, lease, busy_list, per_key, room)
        )

    async def release_deliveries(self, delivery_ids: list[str]) -> None:
        """Give claimed-but-unsent deliveries back: due again now, no attempt counted."""

        def op(c: sqlite3.Connection) -> None:
            now = self.clock.now()
            c.executemany(
                "UPDATE deliveries SET next_attempt_at = ?, lease_until = NULL WHERE id = ? AND lease_until IS NOT NULL",
                [(now, d) for d in delivery_ids],
            )

        await self._write(op)

    async def record_attempts(self, outcomes: list[DeliveryOutcome]) -> list[tuple[str, DeliveryStatus]]:
        return await self._write(lambda c: self._ops.record_attempts(c, outcomes, self.disable_after))

    async def next_delivery_at(self) -> float | None:
        return await self._read(
            lambda c: c.execute(
                "SELECT MIN(next_attempt_at) FROM deliveries INDEXED BY deliveries_due"
                " WHERE status IN ('pending', 'failed')"
            ).fetchone()[0]
        )

    async def delivery_backlog(self) -> int:
        return await self._read_settled(
            lambda c: int(
                c.execute("SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'failed')").fetchone()[
                    0
                ]
            )
        )

    async def list_deliveries(
        self,
        *,
        subscription_id: str | None,
        job_id: str | None,
        status: str | None,
        limit: int,
        after: str | None,
    ) -> tuple[list[Delivery], bool]:
        def read(c: sqlite3.Connection) -> tuple[list[Delivery], bool]:
            where, args = [], []
            for column, value in (
                ("d.subscription_id", subscription_id),
                ("d.job_id", job_id),
                ("d.status", status),
            ):
                if value:
                    where.append(f"{column} = ?")
                    args.append(value)
            if after:
                where.append("d.id < ?")
                args.append(after)
            sql = "SELECT d.*, s.url AS sub_url FROM deliveries d LEFT JOIN subscriptions s ON s.id = d.subscription_id"
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = c.execute(sql + " ORDER BY d.id DESC LIMIT ?", (*args, limit + 1)).fetchall()
            return _with_attempts(c, rows[:limit]), len(rows) > limit

        return await self._read_settled(read)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:

        def read(c: sqlite3.Connection) -> Delivery | None:
            row = c.execute(
                "SELECT d.*, s.url AS sub_url FROM deliveries d LEFT JOIN subscriptions s"
                " ON s.id = d.subscription_id WHERE d.id = ?",
                (delivery_id,),
            ).fetchone()
            return _with_attempts(c, [row])[0] if row is not None else None

        return await self._read_settled(read)

    async def retry_delivery(self, delivery_id: str) -> str | None:
        """Make a dead or failed delivery due now on a fresh schedule; returns its previous status or None.

        The whole retry schedule starts again (`retry_base` marks where), while `attempts` keeps counting
        every attempt made. A failed delivery being sent right now keeps its lease (no second send at
        once); only its schedule starts again.
        """

        def op(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT status FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if row is None:
                return None
            if row["status"] in ("dead", "failed"):
                self._requeue(c, [delivery_id])
            return str(row["status"])

        return await self._write(op)

    def _requeue(self, c: sqlite3.Connection, delivery_ids: list[str]) -> int:
        """Dead or failed deliveries back to `pending`, due now, at the start of the retry schedule."""
        now = self.clock.now()
        ids_json = json.dumps(delivery_ids)
        count = c.execute(
            "UPDATE deliveries SET status = 'pending', retry_base = attempts, next_attempt_at = ?,"
            " updated_at = ? WHERE id IN (SELECT value FROM json_each(?)) AND status IN ('dead', 'failed')"
            " AND lease_until IS NULL",
            (now, now, ids_json),
        ).rowcount
        # In flight now: its attempt is recorded against the fresh schedule.
        c.execute(
            "UPDATE deliveries SET retry_base = attempts, updated_at = ? WHERE id IN"
            " (SELECT value FROM json_each(?)) AND status = 'failed' AND lease_until IS NOT NULL",
            (now, ids_json),
        )
        if count:
            self._ops.flag_deliveries = True
        return int(count)

    async def retry_dead_deliveries(
        self, *, subscription_id: str | None, since: float | None, chunk: int = 1000
    ) -> int:
        """Retry every dead delivery of a subscription and/or made since `since`; returns how many.

        Each chunk of `chunk` deliveries is its own transaction (as replay does), so a large retry never
        holds the writer long. Deliveries of a disabled or deleted subscription are left dead: they would
        only die again.
        """
        total = 0
        after = ""
        while True:
            retried, last = await self._write(
                functools.partial(
                    self._retry_chunk, subscription_id=subscription_id, since=since, after=after, chunk=chunk
                )
            )
            total += retried
            if last is None:
                return total
            after = last

    def _retry_chunk(
        self, c: sqlite3.Connection, subscription_id: str | None, since: float | None, after: str, chunk: int
    ) -> tuple[int, str | None]:
        where = ["d.status = 'dead'", "d.id > ?"]
        args: list[Any] = [after]
        if subscription_id is not None:
            where.append("d.subscription_id = ?")
            args.append(subscription_id)
        if since is not None:
            where.append("d.created_at >= ?")
            args.append(since)
        found = [
            (r[0], r[1])
            for r in c.execute(
                "SELECT d.id, d.subscription_id IS NULL OR s.enabled = 1 FROM deliveries d"
                " LEFT JOIN subscriptions s ON s.id = d.subscription_id"
                f" WHERE {' AND '.join(where)} ORDER BY d.id LIMIT ?",
                (*args, chunk),
            )
        ]
        retried = self._requeue(c, [d for d, live in found if live]) if found else 0
        return retried, (found[-1][0] if len(found) == chunk else None)
