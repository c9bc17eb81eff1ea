"""Archives: the durable work of copying finished videos' assets to storage."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from service.store.records import (
    Archive,
    ClaimedArchive,
    Job,
)
from service.store.sqlite.common import (
    ERROR_TEXT_LIMIT,
    _dumps,
    _loads,
)
from service.store.sqlite.rows import _archive, _job
from service.store.sqlite.writer import StoreCore


class ArchiveQueries(StoreCore):
    """Archives: the durable work of copying finished videos' assets to storage."""

    # -- archive ---------------------------------------------------------------------------------

    async def configure_archive(self, variants: tuple[str, ...]) -> None:
        """Archive these variants of every video that completes from now on (none: archiving is off).

        Archive rows leased by a process that died are due again at once, like deliveries.
        """
        self._ops.archive_variants = tuple(variants)

        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE archives SET next_attempt_at = ?, lease_until = NULL"
                " WHERE status = 'pending' AND lease_until IS NOT NULL",
                (self.clock.now(),),
            )

        await self._write(op)

    async def claim_archives(
        self, limit: int, lease: float, busy: Iterable[tuple[str, str]] = ()
    ) -> list[ClaimedArchive]:
        """Lease due archive rows (oldest due first); rows in `busy` (still being copied here) are skipped."""
        skip = set(busy)

        def op(c: sqlite3.Connection) -> list[ClaimedArchive]:
            now = self.clock.now()
            rows = c.execute(
                "SELECT a.job_id, a.variant, a.attempts, a.created_at, j.resource_id,"
                " json_extract(j.result, '$.expires_at') AS expires_at"
                " FROM archives a INDEXED BY archives_due JOIN jobs j ON j.id = a.job_id"
                " WHERE a.status = 'pending' AND a.next_attempt_at <= ? ORDER BY a.next_attempt_at LIMIT ?",
                (now, limit + len(skip)),
            ).fetchall()
            rows = [r for r in rows if (r["job_id"], r["variant"]) not in skip][:limit]
            c.executemany(
                "UPDATE archives SET next_attempt_at = ?, lease_until = ?, attempts = attempts + 1, updated_at = ?"
                " WHERE job_id = ? AND variant = ?",
                [(now + lease, now + lease, now, r["job_id"], r["variant"]) for r in rows],
            )
            return [
                ClaimedArchive(
                    job_id=r["job_id"],
                    variant=r["variant"],
                    resource_id=r["resource_id"],
                    attempts=r["attempts"] + 1,
                    created_at=r["created_at"],
                    expires_at=r["expires_at"] if isinstance(r["expires_at"], int | float) else None,
                )
                for r in rows
            ]

        return await self._write(op)

    async def archive_retry(self, job_id: str, variant: str, at: float, error: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE archives SET next_attempt_at = ?, lease_until = NULL, error = ?, updated_at = ?"
                " WHERE job_id = ? AND variant = ? AND status = 'pending'",
                (at, error[:ERROR_TEXT_LIMIT], self.clock.now(), job_id, variant),
            )

        await self._write(op)

    async def archive_stored(
        self,
        job_id: str,
        variant: str,
        *,
        key: str,
        uri: str,
        size: int,
        sha256: str,
        content_type: str | None,
    ) -> Job | None:
        """Record a stored asset and merge it into `result.assets`; the last one emits `video.archived`."""

        def op(c: sqlite3.Connection) -> Job | None:
            now = self.clock.now()
            cur = c.execute(
                "UPDATE archives SET status = 'stored', next_attempt_at = NULL, lease_until = NULL, size = ?,"
                " sha256 = ?, uri = ?, key = ?, content_type = ?, stored_at = ?, error = NULL, updated_at = ?"
                " WHERE job_id = ? AND variant = ? AND status = 'pending'",
                (size, sha256, uri, key, content_type, now, now, job_id, variant),
            )
            if cur.rowcount == 0:
                return None
            entry = {"size": size, "sha256": sha256, "stored_at": int(now), "uri": uri}
            return self._archive_finished(c, job_id, variant, entry, now)

        return await self._write(op)

    async def archive_failed(self, job_id: str, variant: str, error: str) -> Job | None:
        """Give up on an asset: `result.assets[variant]` says `archive_failed` and why."""

        def op(c: sqlite3.Connection) -> Job | None:
            now = self.clock.now()
            message = error[:ERROR_TEXT_LIMIT]
            cur = c.execute(
                "UPDATE archives SET status = 'archive_failed', next_attempt_at = NULL, lease_until = NULL,"
                " error = ?, updated_at = ? WHERE job_id = ? AND variant = ? AND status = 'pending'",
                (message, now, job_id, variant),
            )
            if cur.rowcount == 0:
                return None
            entry = {"status": "archive_failed", "error": message}
            return self._archive_finished(c, job_id, variant, entry, now)

        return await self._write(op)

    def _archive_finished(
        self, c: sqlite3.Connection, job_id: str, variant: str, entry: dict[str, Any], now: float
    ) -> Job | None:
        row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        result = dict(_loads(row["result"]) or {})
        result["assets"] = {**(result.get("assets") or {}), variant: entry}
        c.execute("UPDATE jobs SET result = ?, updated_at = ? WHERE id = ?", (_dumps(result), now, job_id))
        job = _job(c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
        statuses = [r[0] for r in c.execute("SELECT status FROM archives WHERE job_id = ?", (job_id,))]
        # One event per job, once every configured variant is final: archived when all are stored.
        if "pending" not in statuses:
            event_type = "video.archived" if set(statuses) == {"stored"} else "video.archive_failed"
            self._ops.emit(c, event_type, job.to_api(), source="archiver", job=job)
        return job

    async def get_archive(self, job_id: str, variant: str) -> Archive | None:
        def read(c: sqlite3.Connection) -> Archive | None:
            row = c.execute(
                "SELECT * FROM archives WHERE job_id = ? AND variant = ?", (job_id, variant)
            ).fetchone()
            return _archive(row) if row is not None else None

        return await self._read(read)

    async def list_archives(self, job_id: str | None = None) -> list[Archive]:
        def read(c: sqlite3.Connection) -> list[Archive]:
            if job_id is None:
                rows = c.execute("SELECT * FROM archives ORDER BY created_at").fetchall()
            else:
                rows = c.execute(
                    "SELECT * FROM archives WHERE job_id = ? ORDER BY variant", (job_id,)
                ).fetchall()
            return [_archive(r) for r in rows]

        return await self._read(read)

    async def next_archive_at(self) -> float | None:
        return await self._read(
            lambda c: c.execute(
                "SELECT MIN(next_attempt_at) FROM archives INDEXED BY archives_due WHERE status = 'pending'"
            ).fetchone()[0]
        )
