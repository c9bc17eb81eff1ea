"""Counts for /metrics and the reads behind the operator console."""

from __future__ import annotations

import sqlite3
from typing import Any

from service.store.records import (
    Attempt,
    Job,
)
from service.store.sqlite.requests import RequestQueries
from service.store.sqlite.rows import _job
from service.store.sqlite.writer import StoreCore


class ConsoleQueries(StoreCore):
    """Counts for /metrics and the reads behind the operator console."""

    # -- metrics ----------------------------------------------------------------------------------

    async def job_counts(self) -> list[tuple[str, str, int]]:
        return await self._read_settled(
            lambda c: [
                (r[0], r[1], int(r[2]))
                # Kept current by the writing transactions, not counted here.
                for r in c.execute("SELECT kind, status, n FROM job_counts WHERE n > 0").fetchall()
            ]
        )

    async def subscription_counts(self) -> tuple[int, int]:
        """(enabled, disabled) subscriptions: few rows, counted at scrape time."""

        def read(c: sqlite3.Connection) -> tuple[int, int]:
            row = c.execute("SELECT TOTAL(enabled != 0), TOTAL(enabled = 0) FROM subscriptions").fetchone()
            return int(row[0]), int(row[1])

        return await self._read(read)

    # -- console reads (service/ui) -----------------------------------------------------------------

    async def jobs_by_idempotency_key(self, key: str) -> list[Job]:
        """The job one POST /v1/jobs made under `key`, or every job of the batch made under it."""

        def read(c: sqlite3.Connection) -> list[Job]:
            found = RequestQueries._jobs_for_key(c, key, False) or RequestQueries._jobs_for_key(c, key, True)
            return found[0] if found is not None else []

        return await self._read(read)

    async def find_jobs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        origin: str | None = None,
        created_from: float | None = None,
        created_to: float | None = None,
        metadata: tuple[str, str] | None = None,
        limit: int,
        after: str | None = None,
    ) -> tuple[list[Job], bool]:
        """list_jobs with the console's further filters: origin, a created range and one metadata key=value.

        Newest first by id; a metadata filter reads each candidate's metadata (no index), so it costs up
        to a scan of the jobs the other filters leave, stopping at a page of matches.
        """

        def read(c: sqlite3.Connection) -> tuple[list[Job], bool]:
            where: list[str] = []
            args: list[Any] = []
            for column, value in (("status", status), ("kind", kind), ("origin", origin)):
                if value:
                    where.append(f"{column} = ?")
                    args.append(value)
            if created_from is not None:
                where.append("created_at >= ?")
                args.append(created_from)
            if created_to is not None:
                where.append("created_at < ?")
                args.append(created_to)
            if metadata is not None:
                where.append(
                    "EXISTS (SELECT 1 FROM json_each(jobs.metadata) m WHERE m.key = ? AND m.value = ?)"
                )
                args.extend(metadata)
            if after:
                where.append("id < ?")
                args.append(after)
            sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
            rows = c.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit + 1)).fetchall()
            return [_job(r) for r in rows[:limit]], len(rows) > limit

        return await self._read_settled(read)

    async def console_counts(self, since: float) -> dict[str, int]:
        """Webhooks received since `since` and deliveries waiting or dead: each an index range count."""

        def read(c: sqlite3.Connection) -> dict[str, int]:
            out = {"received": 0, "pending": 0, "failed": 0, "dead": 0}
            out["received"] = int(
                c.execute(
                    "SELECT COUNT(*) FROM events INDEXED BY events_received"
                    " WHERE direction = 'received' AND created_at >= ?",
                    (since,),
                ).fetchone()[0]
            )
            for status, n in c.execute(
                "SELECT status, COUNT(*) FROM deliveries WHERE status IN ('pending', 'failed', 'dead')"
                " GROUP BY status"
            ).fetchall():
                out[status] = int(n)
            return out

        return await self._read_settled(read)

    async def subscription_attempts(self, sub_id: str, since: float, limit: int = 10_000) -> list[Attempt]:
        """The subscription's delivery attempts since `since`, newest first (for its success rate and latency),
        with the first 200 characters of each failed one's answer (for its last errors)."""

        def read(c: sqlite3.Connection) -> list[Attempt]:
            rows = c.execute(
                "SELECT a.attempted_at, a.status_code, a.latency_ms, a.error, CASE WHEN a.status_code"
                " BETWEEN 200 AND 299 THEN NULL ELSE substr(a.response_body, 1, 200) END FROM delivery_attempts a"
                " JOIN deliveries d ON d.id = a.delivery_id"
                " WHERE d.subscription_id = ? AND a.attempted_at >= ? ORDER BY a.attempted_at DESC LIMIT ?",
                (sub_id, since, limit),
            ).fetchall()
            return [Attempt(r[0], r[1], r[2], r[3], r[4]) for r in rows]

        return await self._read(read)
