"""The writer-side operations on jobs and the outbox, run inside the writer's transaction."""

from __future__ import annotations

import json
import random
import sqlite3
from typing import Any

from service import ids
from service.clock import Clock
from service.domain import (
    Kind,
    Observation,
    Origin,
    Status,
)
from service.domain.fanout import fan_out
from service.domain.plan import new_webhook_job, plan_observation, status_effects
from service.secretbox import SecretBox
from service.store.records import (
    Job,
    Subscription,
)
from service.store.sqlite.common import (
    _OPENED_CACHE_SIZE,
    _compact,
    _count_new_jobs,
    _dumps,
    _Rows,
)
from service.store.sqlite.rows import _job, _subscription

_JSON_COLUMNS = frozenset({"result", "error"})  # job fields stored as JSON text


class OpsCore:
    """The SQL run inside a writer transaction: jobs, the state machine's writes and the outbox.

    Every method runs inside a transaction the caller (the writer) manages.
    """

    def __init__(
        self,
        clock: Clock,
        retry_schedule: tuple[float, ...],
        callback_secret: str | None,
        box: SecretBox | None,
    ) -> None:
        self.clock = clock
        self.box = box
        self.retry_schedule = retry_schedule
        self.callback_secret = callback_secret
        self._subscriptions: list[Subscription] | None = None
        self._claim_turn = 0
        self.rng = random.Random()
        # Flags raised by operations in the current batch, turned into Signals after the commit.
        self.flag_deliveries = False
        self.flag_submissions = False
        self.flag_refreshes = False
        self.flag_inbox = False
        self.flag_applied = False  # inbox rows were applied
        # Jobs that reached a terminal state in the current batch: (kind, status, seconds since creation).
        self.finished: list[tuple[str, str, float]] = []
        self.archive_variants: tuple[str, ...] = ()  # set by configure_archive
        self._opened: dict[tuple[str, str], str] = {}  # (sealed secret, owner) -> secret (open_secret)

    def open_secret(self, value: str, owner: str) -> str:
        """The secret sealed in `value` for subscription `owner`, opened once per sealed value (the claim
        opens one per delivery). SealError when it does not open there."""
        if self.box is None:
            return value
        key = (value, owner)  # a sealed value opens only for its own subscription: the cache keeps both
        opened = self._opened.get(key)
        if opened is None:
            if len(self._opened) >= _OPENED_CACHE_SIZE:
                self._opened.clear()
            opened = self._opened[key] = self.box.open(value, owner)
        return opened

    def seal_secret(self, value: str, owner: str) -> str:
        return self.box.seal(value, owner) if self.box is not None else value

    # -- jobs -------------------------------------------------------------------------------------

    def job_row(self, conn: sqlite3.Connection, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM jobs WHERE id = ?", (key,)).fetchone()
        if row is None:
            row = conn.execute("SELECT * FROM jobs WHERE resource_id = ?", (key,)).fetchone()
        return row

    def insert_job(
        self,
        conn: sqlite3.Connection,
        *,
        kind: Kind,
        status: Status,
        origin: Origin,
        resource_id: str | None = None,
        request: dict[str, Any] | None = None,
        callback_url: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        next_submit_at: float | None = None,
        refresh_at: float | None = None,
    ) -> sqlite3.Row:
        now = self.clock.now()
        job_id = ids.job_id()
        conn.execute(
            "INSERT INTO jobs (id, kind, resource_id, status, progress, origin, request, callback_url, metadata,"
            " created_at, updated_at, sequence, idempotency_key, next_submit_at, refresh_at)"
            " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
            (
                job_id,
                kind,
                resource_id,
                status,
                origin,
                _dumps(request),
                callback_url,
                json.dumps(metadata or {}),
                now,
                now,
                idempotency_key,
                next_submit_at,
                refresh_at,
            ),
        )
        _count_new_jobs(conn, [(kind, status)])
        if metadata:
            conn.executemany(
                "INSERT INTO job_metadata (key, value, job_id) VALUES (?, ?, ?)",
                [(key, value, job_id) for key, value in metadata.items()],
            )
        if next_submit_at is not None:
            self.flag_submissions = True
        if refresh_at is not None:
            self.flag_refreshes = True
        row: sqlite3.Row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row

    def apply(
        self,
        conn: sqlite3.Connection,
        row: sqlite3.Row,
        obs: Observation,
        source: str,
        extra: dict[str, Any] | None = None,
    ) -> Job:
        """The one path every source takes to change a job: state machine, then events and outbox rows.

        `extra` holds bookkeeping columns to write in the same UPDATE (not part of the job object).
        """
        now = self.clock.now()
        current = _job(row)
        plan = plan_observation(current, obs, now)
        sets: dict[str, Any] = dict(extra or {})
        for name, value in plan.fields.items():
            sets[name] = _dumps(value) if name in _JSON_COLUMNS else value
        if plan.finishes_submission:
            sets["next_submit_at"] = None
        if not sets:
            return current
        assignments = ", ".join(f"{name} = ?" for name in sets)
        conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*sets.values(), current.id))
        if plan.status_changed:
            self.on_status_change(conn, plan.job, obs, source, now)
        return plan.job  # the row as written, without reading it back

    def on_status_change(
        self,
        conn: sqlite3.Connection,
        job: Job,
        obs: Observation,
        source: str,
        now: float,
        rows: _Rows | None = None,
    ) -> None:
        """What follows every status change, in the same transaction: metrics, archive work, the event.

        The rows go into `rows` when given (the caller writes them), else they are written here.
        """
        pending = _Rows() if rows is None else rows
        effects = status_effects(job, obs, now, self.archive_variants)
        if effects.finished_after is not None:
            self.finished.append((job.kind, job.status, effects.finished_after))
        pending.archives.extend((job.id, variant, now, now, now) for variant in effects.archive_variants)
        event_type = effects.event_type
        self.emit(conn, event_type, job.to_api(), source=source, job=job, rows=pending)
        if rows is None:
            pending.write(conn)

    def webhook_job(self, kind: Kind, resource_id: str, obs: Observation, now: float, rows: _Rows) -> Job:
        """A job first heard of by webhook, written once in its final state (the receiver's hot path)."""
        job = new_webhook_job(ids.job_id(), kind, resource_id, obs, now)
        rows.jobs.append(
            (
                job.id,
                kind,
                resource_id,
                job.status,
                job.progress,
                now,
                now,
                job.completed_at,
                job.sequence,
                now,
            )
        )
        self.flag_refreshes = True
        return job

    # -- events and the outbox --------------------------------------------------------------------

    def subscriptions(self, conn: sqlite3.Connection) -> list[Subscription]:
        if self._subscriptions is None:
            rows = conn.execute("SELECT * FROM subscriptions WHERE enabled = 1 ORDER BY id").fetchall()
            self._subscriptions = [_subscription(r, self.box) for r in rows]
        return self._subscriptions

    def forget_subscriptions(self) -> None:
        self._subscriptions = None

    def rolled_back(self, finished: int = 0) -> None:
        """The transaction went back to a point where `finished` jobs had finished: forget what came after."""
        self.forget_subscriptions()
        del self.finished[finished:]

    def emit(
        self,
        conn: sqlite3.Connection,
        event_type: str,
        data: dict[str, Any],
        *,
        source: str,
        job: Job | None = None,
        only_subscription: str | None = None,
        exclude_subscription: str | None = None,
        rows: _Rows | None = None,
    ) -> str:
        """An emitted event and its delivery rows (the transactional outbox): into `rows`, or written now."""
        now = self.clock.now()
        event_id = ids.event_id()
        body = _compact(
            {"id": event_id, "object": "event", "type": event_type, "created_at": int(now), "data": data}
        )
        job_id = job.id if job else None
        pending = _Rows() if rows is None else rows
        pending.events.append((event_id, "emitted", event_type, job_id, source, now, None, None, body, None))
        targets = fan_out(
            event_type,
            self.subscriptions(conn),
            job_id=job_id,
            job_sequence=job.sequence if job else None,
            callback_url=job.callback_url if job else None,
            only_subscription=only_subscription,
            exclude_subscription=exclude_subscription,
        )
        first_at = now + self.retry_schedule[0]
        pending.deliveries.extend(
            (
                ids.delivery_id(),
                event_id,
                event_type,
                t.subscription_id,
                job_id,
                t.url,
                first_at,
                t.ordering_key,
                t.sequence,
                now,
                now,
                now,
            )
            for t in targets
        )
        if targets:
            self.flag_deliveries = True
        if rows is None:
            pending.write(conn)
        return event_id
