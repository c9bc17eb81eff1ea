"""Jobs: reads, tracking, submission, refresh, reconciliation and progress."""

from __future__ import annotations

import sqlite3

from service.domain import (
    Kind,
    Observation,
    emitted_type,
    is_terminal,
)
from service.domain.retry import reconcile_delay
from service.store.records import (
    EventRecord,
    Job,
)
from service.store.sqlite.common import (
    _dumps,
    _loads,
)
from service.store.sqlite.rows import _job, list_jobs_sql
from service.store.sqlite.writer import StoreCore


class JobQueries(StoreCore):
    """Jobs: reads, tracking, submission, refresh, reconciliation and progress."""

    # -- jobs -------------------------------------------------------------------------------------

    async def get_job(self, key: str) -> Job | None:
        def read(c: sqlite3.Connection) -> Job | None:
            row = self._ops.job_row(c, key)
            return _job(row) if row is not None else None

        return await self._read_settled(read)

    async def list_jobs(
        self,
        *,
        status: str | None,
        kind: str | None,
        limit: int,
        after: str | None,
        before: str | None = None,
        order: str = "desc",
        metadata: tuple[str, str] | None = None,
    ) -> tuple[list[Job], bool]:
        """A page of jobs in id (creation) order, `desc` newest first; `after` and `before` are ids.

        `after` pages onward in the listing order; `before` pages back (the page nearest to it, still shown
        in the listing order). With a metadata (key, value) the walk is over job_metadata's primary key,
        so every filter is an index seek plus a walk in id order (see EXPLAIN in tests/test_job_requests.py).
        """
        sql, args, backwards = list_jobs_sql(
            status=status, kind=kind, after=after, before=before, order=order, metadata=metadata
        )

        def read(c: sqlite3.Connection) -> tuple[list[Job], bool]:
            rows = c.execute(sql, (*args, limit + 1)).fetchall()
            page = [_job(r) for r in rows[:limit]]
            return (page[::-1] if backwards else page), len(rows) > limit

        return await self._read_settled(read)

    async def job_events(self, job_id: str) -> list[EventRecord]:
        def read(c: sqlite3.Connection) -> list[EventRecord]:
            rows = c.execute(
                "SELECT * FROM events WHERE job_id = ? ORDER BY created_at, id", (job_id,)
            ).fetchall()
            return [
                EventRecord(
                    id=r["id"],
                    direction=r["direction"],
                    type=r["type"],
                    job_id=r["job_id"],
                    source=r["source"],
                    created_at=r["created_at"],
                    body=r["body"],
                    webhook_id=r["webhook_id"],
                )
                for r in rows
            ]

        return await self._read_settled(read)

    async def track_job(
        self, *, kind: Kind, resource_id: str, callback_url: str | None, metadata: dict[str, str]
    ) -> tuple[Job, bool]:
        """Track a resource made elsewhere; (job, created). A new job is refreshed from OpenAI at once."""

        def op(c: sqlite3.Connection) -> tuple[Job, bool]:
            row = c.execute("SELECT * FROM jobs WHERE resource_id = ?", (resource_id,)).fetchone()
            if row is not None:
                return _job(row), False
            row = self._ops.insert_job(
                c,
                kind=kind,
                status="queued",
                origin="track",
                resource_id=resource_id,
                callback_url=callback_url,
                metadata=metadata,
                refresh_at=self.clock.now(),
            )
            return _job(row), True

        return await self._write(op)

    async def apply_observation(self, job_id: str, obs: Observation, source: str) -> Job | None:
        """The shared entry point for the submitter, the refresher, the reconciler and cancellation."""

        def op(c: sqlite3.Connection) -> Job | None:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            return self._ops.apply(c, row, obs, source)

        return await self._write(op)

    # -- submission -------------------------------------------------------------------------------

    async def claim_submissions(self, limit: int, lease: float) -> list[Job]:
        def op(c: sqlite3.Connection) -> list[Job]:
            now = self.clock.now()
            rows = c.execute(
                "SELECT * FROM jobs WHERE next_submit_at <= ? AND status = 'pending' ORDER BY next_submit_at LIMIT ?",
                (now, limit),
            ).fetchall()
            c.executemany(
                "UPDATE jobs SET next_submit_at = ?, submit_attempts = submit_attempts + 1 WHERE id = ?",
                [(now + lease, r["id"]) for r in rows],
            )
            return [_job(r) for r in rows]

        return await self._write(op)

    async def submission_succeeded(self, job_id: str, obs: Observation) -> Job | None:
        def op(c: sqlite3.Connection) -> Job | None:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE jobs SET next_submit_at = NULL WHERE id = ?", (job_id,))
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return self._ops.apply(c, row, obs, source="submitter")

        return await self._write(op)

    async def submission_retry(self, job_id: str, at: float) -> None:
        await self._write(
            lambda c: c.execute(
                "UPDATE jobs SET next_submit_at = ? WHERE id = ? AND status = 'pending'", (at, job_id)
            )
        )

    async def next_submission_at(self) -> float | None:
        return await self._read(
            lambda c: c.execute("SELECT MIN(next_submit_at) FROM jobs WHERE status = 'pending'").fetchone()[0]
        )

    # -- refresh (the follow-up retrieve after a webhook or a track) -------------------------------

    async def claim_refreshes(self, limit: int, lease: float) -> list[Job]:
        def op(c: sqlite3.Connection) -> list[Job]:
            now = self.clock.now()
            rows = c.execute(
                "SELECT * FROM jobs WHERE refresh_at <= ? ORDER BY refresh_at LIMIT ?", (now, limit)
            ).fetchall()
            c.executemany(
                "UPDATE jobs SET refresh_at = ?, refresh_attempts = refresh_attempts + 1 WHERE id = ?",
                [(now + lease, r["id"]) for r in rows],
            )
            return [_job(r) for r in rows if r["resource_id"]]

        return await self._write(op)

    async def refresh_done(self, job_id: str, obs: Observation | None, source: str = "refresh") -> Job | None:
        def op(c: sqlite3.Connection) -> Job | None:
            c.execute("UPDATE jobs SET refresh_at = NULL, refresh_attempts = 0 WHERE id = ?", (job_id,))
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or obs is None:
                return _job(row) if row is not None else None
            return self._ops.apply(c, row, obs, source=source)

        return await self._write(op)

    async def refresh_retry(self, job_id: str, delay: float, max_attempts: int) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE jobs SET refresh_at = CASE WHEN refresh_attempts >= ? THEN NULL ELSE ? END WHERE id = ?",
                (max_attempts, self.clock.now() + delay, job_id),
            )

        await self._write(op)

    async def defer_refreshes(self, job_ids: list[str], at: float) -> None:
        """Give claimed refreshes back, due at `at`, without counting the claim as an attempt."""

        def op(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE jobs SET refresh_at = ?, refresh_attempts = MAX(refresh_attempts - 1, 0) WHERE id = ?",
                [(at, job_id) for job_id in job_ids],
            )

        if job_ids:
            await self._write(op)

    async def next_refresh_at(self) -> float | None:
        return await self._read(
            lambda c: c.execute("SELECT MIN(refresh_at) FROM jobs WHERE refresh_at IS NOT NULL").fetchone()[0]
        )

    # -- reconciliation ---------------------------------------------------------------------------

    async def stale_jobs(self, older_than: float, limit: int) -> list[Job]:
        """Non-terminal jobs with a resource id, not updated since `older_than`, whose backoff has passed.

        Oldest update first. Two range seeks on jobs_stale: never-reconciled jobs by age, and jobs whose
        backoff ran out; jobs still backing off are not visited at all.
        """

        def read(c: sqlite3.Connection) -> list[Job]:
            params = {"older": older_than, "now": self.clock.now(), "limit": limit}
            return [_job(r) for r in c.execute(self._stale_sql(), params).fetchall()]

        return await self._read(read)

    async def reconciled(
        self, results: list[tuple[str, Observation]], *, base_delay: float, cap: float
    ) -> list[tuple[str, str]]:
        """Apply what the reconciler learned, through the webhook's path; (job_id, outcome) per job applied.

        A job whose status moved is "updated" and its backoff starts over. Any other is "unchanged" and
        is asked again after base_delay·2^(misses-1), at most `cap`. Progress alone is stored but counts
        as unchanged: the reconciler is there for missed webhooks, and a long video whose progress creeps
        would otherwise be asked at full rate until it ends. No jitter: jobs due together share list pages.
        """

        def op(c: sqlite3.Connection) -> list[tuple[str, str]]:
            now = self.clock.now()
            outcomes: list[tuple[str, str]] = []
            for job_id, obs in results:
                row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    continue
                job = self._ops.apply(c, row, obs, source="reconcile")
                if job.status != row["status"]:
                    outcomes.append((job_id, "updated"))
                    c.execute(
                        "UPDATE jobs SET reconcile_misses = 0, reconcile_at = NULL WHERE id = ?", (job_id,)
                    )
                else:
                    outcomes.append((job_id, "unchanged"))
                    misses = row["reconcile_misses"] + 1
                    delay = reconcile_delay(misses, base=base_delay, cap=cap)
                    c.execute(
                        "UPDATE jobs SET reconcile_misses = ?, reconcile_at = ? WHERE id = ?",
                        (misses, now + delay, job_id),
                    )
            return outcomes

        return await self._write(op)

    @staticmethod
    def _stale_sql() -> str:
        # INDEXED BY makes SQLite fail loudly rather than fall back to jobs_status (every in-flight job).
        alive = "status IN ('queued', 'in_progress') AND resource_id IS NOT NULL"
        return (
            f"SELECT * FROM jobs INDEXED BY jobs_stale WHERE {alive}"
            " AND reconcile_at IS NULL AND updated_at <= :older"
            f" UNION ALL SELECT * FROM jobs INDEXED BY jobs_stale WHERE {alive}"
            " AND reconcile_at <= :now AND updated_at <= :older"
            " ORDER BY updated_at LIMIT :limit"
        )

    @staticmethod
    def _expiring_sql() -> str:
        return (
            "SELECT * FROM jobs INDEXED BY jobs_expiry WHERE kind = 'video' AND status = 'completed'"
            " AND expired_notified = 0 AND json_extract(result, '$.expires_at') <= :now LIMIT :limit"
        )

    async def expire_videos(self, limit: int = 500) -> list[Job]:
        """Announce `video.expired` once for each completed video whose `result.expires_at` has passed.

        The job stays `completed`; its result gains `expired: true`. Event, outbox rows and the
        `expired_notified` mark are written in one transaction, so the event is emitted exactly once.
        """

        def due(c: sqlite3.Connection) -> bool:
            params = {"now": self.clock.now(), "limit": 1}
            return c.execute(self._expiring_sql(), params).fetchone() is not None

        if not await self._read(due):  # the common case costs a read, not a write transaction
            return []

        def op(c: sqlite3.Connection) -> list[Job]:
            now = self.clock.now()
            jobs: list[Job] = []
            for row in c.execute(self._expiring_sql(), {"now": now, "limit": limit}).fetchall():
                result = dict(_loads(row["result"]) or {})
                result["expired"] = True
                c.execute(
                    "UPDATE jobs SET result = ?, expired_notified = 1, updated_at = ? WHERE id = ?",
                    (_dumps(result), now, row["id"]),
                )
                job = _job(c.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())
                self._ops.emit(c, emitted_type("video", "expired"), job.to_api(), source="reconcile", job=job)
                jobs.append(job)
            return jobs

        return await self._write(op)

    async def reconcile_query_plans(self) -> dict[str, list[str]]:
        """SQLite's plan for the reconciler's two per-pass queries (tests check they seek their index)."""

        def read(c: sqlite3.Connection) -> dict[str, list[str]]:
            plans: dict[str, list[str]] = {}
            for name, sql, params in (
                ("stale_jobs", self._stale_sql(), {"older": 0.0, "now": 0.0, "limit": 1}),
                ("expire_videos", self._expiring_sql(), {"now": 0.0, "limit": 1}),
            ):
                plans[name] = [str(r[3]) for r in c.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]
            return plans

        return await self._read(read)

    async def progress_candidates(self, limit: int = 1000) -> list[Job]:
        """Submitted videos not yet finished, oldest first (a scan of the small partial jobs_stale index)."""
        return await self._read(
            lambda c: [
                _job(r)
                for r in c.execute(
                    "SELECT * FROM jobs INDEXED BY jobs_stale WHERE status IN ('queued', 'in_progress')"
                    " AND resource_id IS NOT NULL AND kind = 'video' ORDER BY created_at LIMIT ?",
                    (limit,),
                ).fetchall()
            ]
        )

    async def record_progress(self, learned: list[tuple[str, Observation]], step: int) -> list[Job]:
        """Apply polled video objects through the shared path, then emit `video.progress` for each job whose
        progress moved at least `step` points since its last one. `video.progress` is not a state change: it
        leaves `sequence` alone. Returns the jobs that got a progress event."""

        def op(c: sqlite3.Connection) -> list[Job]:
            emitted: list[Job] = []
            for job_id, obs in learned:
                row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    continue
                job = self._ops.apply(c, row, obs, source="progress")
                if is_terminal(job.status) or job.progress - row["progress_emitted"] < step:
                    continue
                c.execute("UPDATE jobs SET progress_emitted = ? WHERE id = ?", (job.progress, job_id))
                self._ops.emit(c, "video.progress", job.to_api(), source="progress", job=job)
                emitted.append(job)
            return emitted

        return await self._write(op)
