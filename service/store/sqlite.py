"""The SQLite store: all SQL lives here; one writer task commits waiting writes together (group commit).

Each operation is a plain function over a sqlite3 connection. The writer task takes every waiting
operation as one batch: BEGIN on the connection's aiosqlite thread, the operations on the event loop
(one savepoint around them all; one per operation only if one fails, so a failing operation does not
undo its neighbours), COMMIT back on the thread. Reads run on a second connection's thread and WAL
checkpoints on a third, beside the writer.

Durability: WAL with `synchronous=FULL`, so a commit survives power loss, not only a process crash.
Group commit makes the fsync per batch, not per request, which is what keeps FULL affordable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import random
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from service import ids
from service.clock import Clock
from service.domain import (
    EVENT_TYPES,
    Kind,
    Observation,
    Origin,
    Status,
    decide,
    emitted_type,
    is_terminal,
    matches_filter,
)
from service.quotas import (
    CONCURRENT_RETRY_AFTER,
    DAY,
    HOUR,
    NewJob,
    QuotaExceeded,
    Quotas,
    client_label,
    daily_retry_after,
    per_hour_retry_after,
)
from service.secretbox import SealError, SecretBox
from service.store.migrations import apply_migrations
from service.store.records import (
    Archive,
    Attempt,
    ClaimedArchive,
    ClaimedDelivery,
    Delivery,
    DeliveryStatus,
    EventRecord,
    IdempotencyKeyReused,
    IncomingWebhook,
    Job,
    Subscription,
    WebhookOutcome,
)

log = logging.getLogger("sorahook.store")

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], T]

MAX_BATCH = 512
GATHER_TURNS = 4  # loop turns the writer waits for a growing queue before taking a batch (`_gather`)
# How often the checkpointer copies committed WAL frames into the database file (see `_checkpointer`).
CHECKPOINT_INTERVAL = 0.25
WAL_CATCH_UP_FRAMES = 4096  # 16 MiB of 4 KiB pages
ERROR_TEXT_LIMIT = 500
RESPONSE_BODY_LIMIT = 1024  # of a subscriber's answer, kept with each attempt for the operator


def owner_only(path: Path) -> None:
    """Create the database file (and its folder) readable by this user only, before SQLite opens it.

    SQLite gives the -wal and -shm files the database file's mode, so they follow. A file that already
    exists is narrowed to 0600 too: it holds the sealed secrets and every event body.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            side = path.with_name(path.name + suffix)
            if side.stat().st_mode & 0o077:
                side.chmod(0o600)


class StoreClosed(Exception):
    """The store is closed (shutting down); the write was not attempted."""


@dataclass
class Signals:
    """Set after a commit that gave a worker something to do, so workers need not poll tightly."""

    deliveries: asyncio.Event
    submissions: asyncio.Event
    refreshes: asyncio.Event


@dataclass(slots=True)  # not frozen: one per delivery attempt, and a frozen __init__ costs 5x
class DeliveryOutcome:
    """What a delivery attempt did, as the delivery worker reports it to the store."""

    delivery_id: str
    status_code: int | None
    error: str | None
    latency: float
    retry_after: float | None = None
    response_body: str | None = None  # the first RESPONSE_BODY_LIMIT characters of the answer


def _in_thread(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
    """Run `fn(raw_connection)` on aiosqlite's own thread: one hop for a whole batch of statements.

    aiosqlite has no public call for this; `_execute` and `_conn` have been stable since its first releases.
    """
    return cast("asyncio.Future[T]", conn._execute(fn, conn._conn))  # type: ignore[no-untyped-call]


def _passive_checkpoint(conn: sqlite3.Connection) -> tuple[int, int]:
    _busy, log_frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(log_frames), int(copied)


def _begin(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


_OPENED_CACHE_SIZE = 4096  # opened subscription secrets kept by _Ops.open_secret

# One compact encoder for every write: json.dumps with `separators` builds a new encoder on each call.
_compact = json.JSONEncoder(separators=(",", ":")).encode


_json_string = json.encoder.encode_basestring_ascii  # a str as JSON, the way _compact writes one


def _dumps(value: Any) -> str | None:
    return None if value is None else _compact(value)


def _clip(body: str | None) -> str | None:
    """A response body as stored with its attempt: at most RESPONSE_BODY_LIMIT characters, empty as NULL."""
    return body[:RESPONSE_BODY_LIMIT] if body else None


_DEDUPE_INSERT = "INSERT INTO received_webhooks (webhook_id, event_id, received_at) VALUES (?, ?, ?)"
_WEBHOOK_JOB_INSERT = (
    "INSERT INTO jobs (id, kind, resource_id, status, progress, origin, metadata, created_at, updated_at,"
    " completed_at, sequence, refresh_at) VALUES (?, ?, ?, ?, ?, 'webhook', '{}', ?, ?, ?, ?, ?)"
)
_EVENT_INSERT = (
    "INSERT INTO events (id, direction, type, job_id, source, created_at, webhook_id, openai_event_id, body,"
    " headers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELIVERY_INSERT = (
    "INSERT INTO deliveries (id, event_id, event_type, subscription_id, job_id, url, status, next_attempt_at,"
    " ordering_key, sequence, event_created_at, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)"
)
_ARCHIVE_INSERT = (
    "INSERT OR IGNORE INTO archives (job_id, variant, status, next_attempt_at, created_at, updated_at)"
    " VALUES (?, ?, 'pending', ?, ?, ?)"
)


def _count_new_jobs(conn: sqlite3.Connection, jobs: list[tuple[str, str]]) -> None:
    """Add new jobs, as (kind, status), to job_counts (migration 9: no insert trigger does it)."""
    conn.executemany(
        "INSERT INTO job_counts (kind, status, n) VALUES (?, ?, ?)"
        " ON CONFLICT (kind, status) DO UPDATE SET n = n + excluded.n",
        [(kind, status, n) for (kind, status), n in Counter(jobs).items()],
    )


_DUPLICATE = WebhookOutcome("duplicate")


class _Rows:
    """Rows to insert, gathered so each table takes one executemany.

    The webhook path gathers a whole run of webhooks' rows here and writes them at the end (or before a
    step that reads them back); everything else hands a fresh one that is written at once.
    """

    __slots__ = ("archives", "deliveries", "events", "jobs", "webhooks")

    def __init__(self) -> None:
        self.webhooks: list[tuple[Any, ...]] = []
        self.jobs: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.deliveries: list[tuple[Any, ...]] = []
        self.archives: list[tuple[Any, ...]] = []

    def write(self, conn: sqlite3.Connection) -> None:
        new_jobs = [(job[1], job[3]) for job in self.jobs]  # (kind, status)
        for sql, rows in (
            (_DEDUPE_INSERT, self.webhooks),
            (_WEBHOOK_JOB_INSERT, self.jobs),
            (_EVENT_INSERT, self.events),
            (_DELIVERY_INSERT, self.deliveries),
            (_ARCHIVE_INSERT, self.archives),
        ):
            if rows:
                conn.executemany(sql, rows)
                rows.clear()
        if new_jobs:
            _count_new_jobs(conn, new_jobs)


def list_jobs_sql(
    *,
    status: str | None,
    kind: str | None,
    after: str | None,
    before: str | None,
    order: str,
    metadata: tuple[str, str] | None,
) -> tuple[str, list[str], bool]:
    """The job listing query (its last parameter is the row limit), its arguments, and whether it walks
    backwards (paging back from `before`: the page is read the other way from it, then turned round)."""
    col = "m.job_id" if metadata else "id"
    where: list[str] = []
    args: list[str] = []
    if metadata:
        where += ["m.key = ?", "m.value = ?"]
        args += list(metadata)
    # With a metadata filter, `+` keeps status and kind off their indexes: the walk stays on job_metadata's
    # key in id order (no sort), checking each job's status and kind as it goes.
    plain = "+" if metadata else ""
    if status:
        where.append(f"{plain}status = ?")
        args.append(status)
    if kind:
        where.append(f"{plain}kind = ?")
        args.append(kind)
    newer, older = f"{col} > ?", f"{col} < ?"
    if after:
        where.append(older if order == "desc" else newer)
        args.append(after)
    if before:
        where.append(newer if order == "desc" else older)
        args.append(before)
    backwards = before is not None and after is None
    walk = ("ASC" if order == "desc" else "DESC") if backwards else order.upper()
    source = "job_metadata AS m JOIN jobs ON jobs.id = m.job_id" if metadata else "jobs"
    sql = f"SELECT jobs.* FROM {source}" + (" WHERE " + " AND ".join(where) if where else "")
    return sql + f" ORDER BY {col} {walk} LIMIT ?", args, backwards


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        resource_id=row["resource_id"],
        status=row["status"],
        progress=row["progress"],
        origin=row["origin"],
        request=_loads(row["request"]),
        result=_loads(row["result"]),
        error=_loads(row["error"]),
        callback_url=row["callback_url"],
        metadata=json.loads(row["metadata"] or "{}"),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        sequence=row["sequence"],
        submit_attempts=row["submit_attempts"],
        estimated_cost_usd=row["estimated_cost_usd"],
    )


def _subscription(row: sqlite3.Row, box: SecretBox | None) -> Subscription:
    def opened(value: str | None) -> str | None:
        if box is None or not value:
            return value
        try:
            return box.open(value, row["id"])
        except SealError:  # wrong key or a row edited by hand: shown empty; its deliveries die (claim)
            return None

    return Subscription(
        id=row["id"],
        url=row["url"],
        event_types=_loads(row["event_types"]),
        description=row["description"],
        secret=opened(row["secret"]) or "",
        previous_secret=opened(row["previous_secret"]),
        previous_secret_until=row["previous_secret_until"],
        enabled=bool(row["enabled"]),
        ordered=bool(row["ordered"]),
        disabled_reason=row["disabled_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_success_at=row["last_success_at"],
        failing_since=row["failing_since"],
    )


def _delivery(row: sqlite3.Row, attempts: list[Attempt] | None = None) -> Delivery:
    return Delivery(
        id=row["id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        subscription_id=row["subscription_id"],
        job_id=row["job_id"],
        url=row["url"] if row["url"] is not None else row["sub_url"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"] if row["status"] in ("pending", "failed") else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        attempt_log=attempts or [],
    )


def _with_attempts(conn: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[Delivery]:
    """Deliveries with their attempt logs, read in one query for the whole page (not one per delivery)."""
    if not rows:
        return []
    ids = [row["id"] for row in rows]
    log: dict[str, list[Attempt]] = {delivery_id: [] for delivery_id in ids}
    for a in conn.execute(
        f"SELECT * FROM delivery_attempts WHERE delivery_id IN ({','.join('?' * len(ids))}) ORDER BY id", ids
    ):
        log[a["delivery_id"]].append(
            Attempt(a["attempted_at"], a["status_code"], a["latency_ms"], a["error"], a["response_body"])
        )
    return [_delivery(row, log[row["id"]]) for row in rows]


class _Ops:
    """The SQL. Every method runs on the store's thread inside a transaction the caller manages."""

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
        # Jobs that reached a terminal state in the current batch: (kind, status, seconds since creation).
        self.finished: list[tuple[str, str, float]] = []
        self.archive_variants: tuple[str, ...] = ()  # issue 9: set by SqliteStore.configure_archive
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
        change = decide(current.status, current.progress, current.sequence, obs)
        sets: dict[str, Any] = dict(extra or {})
        fields: dict[str, Any] = {}
        if obs.resource_id and current.resource_id is None:
            sets["resource_id"] = fields["resource_id"] = obs.resource_id
        if change.fields_changed:
            sets["status"] = fields["status"] = change.status
            sets["progress"] = fields["progress"] = change.progress
            sets["sequence"] = fields["sequence"] = change.sequence
        if change.status_changed and is_terminal(change.status):
            sets["completed_at"] = fields["completed_at"] = obs.completed_at or int(now)
            sets["next_submit_at"] = None
        # Details (result, error) are filled in whenever a source brings them, even without a status
        # change (the follow-up retrieve after a terminal webhook); a terminal job's details only grow.
        if obs.result is not None:
            merged = dict(current.result or {})
            merged.update(obs.result)
            if merged != (current.result or None):
                fields["result"] = merged
                sets["result"] = _dumps(merged)
        if obs.error is not None and (change.status == "failed" or change.status_changed):
            if current.error != obs.error:
                fields["error"] = obs.error
                sets["error"] = _dumps(obs.error)
        if not sets:
            return current
        if fields:
            sets["updated_at"] = fields["updated_at"] = now
        assignments = ", ".join(f"{name} = ?" for name in sets)
        conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*sets.values(), current.id))
        job = replace(current, **fields)  # the row as written, without reading it back
        if change.status_changed:
            self.on_status_change(conn, job, obs, source, now)
        return job

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
        if is_terminal(job.status):
            self.finished.append((job.kind, job.status, max(0.0, now - job.created_at)))
        if self.archive_variants and job.status == "completed" and job.kind == "video":  # issue 9
            pending.archives.extend((job.id, variant, now, now, now) for variant in self.archive_variants)
        event_type = emitted_type(job.kind, job.status)
        if obs.event_type and EVENT_TYPES.get(obs.event_type, (None, None))[1] == job.status:
            event_type = obs.event_type  # OpenAI's own name (`response.incomplete`)
        self.emit(conn, event_type, job.to_api(), source=source, job=job, rows=pending)
        if rows is None:
            pending.write(conn)

    def webhook_job(self, kind: Kind, resource_id: str, obs: Observation, now: float, rows: _Rows) -> Job:
        """A job first heard of by webhook, written once in its final state (the receiver's hot path)."""
        change = decide("queued", 0, 0, obs)
        completed_at = (obs.completed_at or int(now)) if is_terminal(change.status) else None
        job = Job(
            id=ids.job_id(),
            kind=kind,
            resource_id=resource_id,
            status=change.status,
            progress=change.progress,
            origin="webhook",
            request=None,
            result=None,
            error=None,
            callback_url=None,
            metadata={},
            created_at=now,
            updated_at=now,
            completed_at=completed_at,
            sequence=change.sequence,
        )
        rows.jobs.append(
            (job.id, kind, resource_id, job.status, job.progress, now, now, completed_at, job.sequence, now)
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
        # (subscription, callback url, ordering key, sequence) of each delivery to make
        targets: list[tuple[str | None, str | None, str | None, int | None]] = []
        for sub in self.subscriptions(conn):
            if only_subscription is not None and sub.id != only_subscription:
                continue
            if sub.id == exclude_subscription:
                continue
            if only_subscription is None and not matches_filter(event_type, sub.event_types):
                continue
            ordering = f"{sub.id}:{job_id}" if (sub.ordered and job_id) else None
            targets.append((sub.id, None, ordering, job.sequence if job else None))
        if job is not None and job.callback_url and only_subscription is None:
            # A job's callback gets its events in order, as an ordered subscription does.
            targets.append((None, job.callback_url, f"callback:{job.id}", job.sequence))
        first_at = now + self.retry_schedule[0]
        pending.deliveries.extend(
            (
                ids.delivery_id(),
                event_id,
                event_type,
                sub_id,
                job_id,
                url,
                first_at,
                ordering,
                seq,
                now,
                now,
                now,
            )
            for sub_id, url, ordering, seq in targets
        )
        if targets:
            self.flag_deliveries = True
        if rows is None:
            pending.write(conn)
        return event_id

    # -- webhooks ---------------------------------------------------------------------------------

    def record_webhooks(self, conn: sqlite3.Connection, hooks: list[IncomingWebhook]) -> list[WebhookOutcome]:
        """Store verified webhooks in arrival order: dedupe, event rows, job changes and outbox rows.

        Set-based, because the writer hands over every webhook waiting in a batch at once: one dedupe
        lookup, one job lookup, and the rows gathered into one executemany per table (a statement per
        row cost more Python than SQL). A webhook about a job we already have goes through
        the state machine on the row as stored, after the rows gathered so far are written: the job may
        be one this run made, or one an earlier webhook of the run moved.
        """
        now = self.clock.now()
        seen = {
            row[0]
            for row in conn.execute(
                "SELECT webhook_id FROM received_webhooks WHERE webhook_id IN (SELECT value FROM json_each(?))",
                (json.dumps([hook.webhook_id for hook in hooks]),),
            )
        }
        wanted = list({hook.resource_id for hook in hooks if hook.webhook_id not in seen})
        known: dict[str, sqlite3.Row] = {}  # resource id -> its job's row, as stored before this run
        if wanted:
            known = {
                row["resource_id"]: row
                for row in conn.execute(
                    "SELECT * FROM jobs WHERE resource_id IN (SELECT value FROM json_each(?))",
                    (json.dumps(wanted),),
                )
            }
        job_ids = {resource: row["id"] for resource, row in known.items()}  # and the jobs this run makes
        rows = _Rows()
        outcomes: list[WebhookOutcome] = []
        for hook in hooks:
            if hook.webhook_id in seen:  # before, or earlier in this run
                outcomes.append(_DUPLICATE)
                continue
            seen.add(hook.webhook_id)
            our = ids.event_id()  # made in turn, so a job's timeline reads in arrival order
            rows.webhooks.append((hook.webhook_id, our, now))
            job_id = job_ids.get(hook.resource_id)
            mapped = EVENT_TYPES.get(hook.type)
            obs: Observation | None = None
            job: Job | None = None
            if mapped is not None:
                obs = Observation(
                    status=mapped[1],
                    completed_at=hook.created_at if is_terminal(mapped[1]) else None,
                    event_type=hook.type,
                )
                if job_id is None:
                    job = self.webhook_job(mapped[0], hook.resource_id, obs, now, rows)
                    job_id = job_ids[hook.resource_id] = job.id
            rows.events.append(
                (
                    our,
                    "received",
                    hook.type,
                    job_id,
                    "webhook",
                    now,
                    hook.webhook_id,
                    hook.event_id,
                    hook.body,
                    f'{{"webhook-id":{_json_string(hook.webhook_id)},"webhook-timestamp":"{hook.timestamp}"}}',
                )
            )
            # The envelope holds only the id: the job is marked for a background fetch of the full object.
            if job is not None and obs is not None:
                self.on_status_change(conn, job, obs, "webhook", now, rows)
            elif job_id is not None and obs is not None:
                rows.write(conn)
                current = known.pop(hook.resource_id, None)  # as looked up, for its first webhook only
                if current is None:
                    current = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                    assert current is not None
                self.apply(
                    conn, current, obs, source="webhook", extra={"refresh_at": now, "refresh_attempts": 0}
                )
                self.flag_refreshes = True
            elif mapped is None:
                # Not a type we model: pass it through to the subscribers of that type, with OpenAI's data.
                self.emit(conn, hook.type, hook.data, source="webhook", rows=rows)
            outcomes.append(WebhookOutcome("accepted", job_id))
        rows.write(conn)
        return outcomes

    # -- deliveries -------------------------------------------------------------------------------

    # Columns picked by position (plain tuples: no sqlite3.Row built and looked up by name per row).
    _CLAIM_SQL = (
        "SELECT d.id, d.event_id, d.event_type, d.subscription_id, d.job_id, d.url, d.attempts,"
        " d.event_created_at, e.body, s.url, s.secret, s.previous_secret, s.previous_secret_until, s.ordered,"
        " s.enabled FROM deliveries d INDEXED BY deliveries_sub_due JOIN events e ON e.id = d.event_id"
        " LEFT JOIN subscriptions s ON s.id = d.subscription_id"
        " WHERE {target} AND d.status IN ('pending', 'failed') AND d.next_attempt_at <= ?"
        " AND NOT EXISTS ("
        "   SELECT 1 FROM deliveries p WHERE d.ordering_key IS NOT NULL AND p.ordering_key = d.ordering_key"
        "   AND p.status IN ('pending', 'failed') AND (p.sequence < d.sequence"
        "   OR (p.sequence = d.sequence AND p.id < d.id)))"
        " ORDER BY d.next_attempt_at LIMIT ?"
    )

    # The subscriptions with a delivery due now, found by walking the keys of deliveries_sub_due (a
    # partial index of pending and failed rows only): one seek per subscription that has work waiting,
    # none for the idle or disabled ones, however many there are.
    _DUE_KEYS_SQL = (
        "WITH RECURSIVE k(sub) AS ("
        " SELECT (SELECT subscription_id FROM deliveries INDEXED BY deliveries_sub_due"
        "  WHERE status IN ('pending', 'failed') AND subscription_id > ''"
        "  ORDER BY subscription_id LIMIT 1)"
        " UNION ALL"
        " SELECT (SELECT subscription_id FROM deliveries INDEXED BY deliveries_sub_due"
        "  WHERE status IN ('pending', 'failed') AND subscription_id > k.sub"
        "  ORDER BY subscription_id LIMIT 1) FROM k WHERE k.sub IS NOT NULL)"
        " SELECT sub FROM k WHERE sub IS NOT NULL AND (SELECT next_attempt_at FROM deliveries"
        "  INDEXED BY deliveries_sub_due WHERE status IN ('pending', 'failed') AND subscription_id = k.sub"
        "  ORDER BY next_attempt_at LIMIT 1) <= ?"
    )

    def claim_deliveries(
        self,
        conn: sqlite3.Connection,
        limit: int,
        lease: float,
        busy: Iterable[str],
        per_key: int | None = None,
        room: Callable[[str], int] | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease due deliveries, subscription by subscription (then callback URLs).

        Only subscriptions with a delivery due are visited (`_DUE_KEYS_SQL`), so the claim costs in
        proportion to the work waiting, not to the subscriptions there are. Each is a short range seek
        on (subscription_id, next_attempt_at), taking at most `per_key` rows (and at most `room(id)`);
        subscriptions in `busy` (at their in-flight cap) are not visited at all, so a hanging endpoint's
        growing backlog costs the claim nothing, and no subscription's rows can crowd out another's. The
        starting subscription rotates from claim to claim.
        """
        now = self.clock.now()
        skip = set(busy)
        cursor = conn.cursor()
        cursor.row_factory = None
        groups: list[str | None] = [
            r[0] for r in cursor.execute(self._DUE_KEYS_SQL, (now,)) if r[0] not in skip
        ]
        if groups:
            start = self._claim_turn % len(groups)
            groups = groups[start:] + groups[:start]
            self._claim_turn += 1
        groups.append(None)  # per-job callback_url deliveries
        rows: list[tuple[Any, ...]] = []
        for group in groups:
            remaining = limit - len(rows)
            if remaining <= 0:
                break
            args: tuple[Any, ...]
            if group is None:
                # Callback URLs at their cap are left where they are, not leased and given back.
                target = "d.subscription_id IS NULL AND d.url NOT IN (SELECT value FROM json_each(?))"
                sql, args = self._CLAIM_SQL.format(target=target), (json.dumps(sorted(skip)), now, remaining)
            else:
                take = remaining if per_key is None else min(remaining, per_key)
                if room is not None:
                    take = min(take, room(group))
                    if take <= 0:
                        continue
                sql, args = self._CLAIM_SQL.format(target="d.subscription_id = ?"), (group, now, take)
            rows.extend(cursor.execute(sql, args).fetchall())
        claimed: list[ClaimedDelivery] = []
        for (
            delivery_id,
            event_id,
            event_type,
            sub_id,
            job_id,
            own_url,
            attempts,
            event_created_at,
            body,
            sub_url,
            secret,
            previous,
            previous_until,
            ordered,
            enabled,
        ) in rows:
            if sub_id is None:
                url = own_url
                secrets = [self.callback_secret] if self.callback_secret else []
            elif not enabled:  # the subscription was disabled or removed after the event was enqueued
                conn.execute(
                    "UPDATE deliveries SET status = 'dead', next_attempt_at = NULL, lease_until = NULL,"
                    " last_error = ?, updated_at = ? WHERE id = ?",
                    ("subscription disabled or deleted", now, delivery_id),
                )
                continue
            else:
                url = sub_url
                try:
                    secrets = [self.open_secret(secret, sub_id)]
                    if previous and previous_until and now < previous_until:
                        secrets.append(self.open_secret(previous, sub_id))
                except SealError:  # never sent unsigned or signed with a secret from another row
                    conn.execute(
                        "UPDATE deliveries SET status = 'dead', next_attempt_at = NULL, lease_until = NULL,"
                        " last_error = ?, updated_at = ? WHERE id = ?",
                        ("the subscription's secret does not open (SORAHOOK_SECRET_KEY)", now, delivery_id),
                    )
                    continue
            claimed.append(
                ClaimedDelivery(
                    delivery_id,
                    event_id,
                    event_type,
                    sub_id,
                    job_id,
                    url,
                    body,
                    secrets,
                    attempts,
                    event_created_at,
                    bool(ordered),
                )
            )
        if claimed:
            # The lease is the next due time: a claimed row is invisible until the lease runs out.
            # One statement for the batch: each statement step also costs this thread a GIL hand-off.
            conn.execute(
                "UPDATE deliveries SET next_attempt_at = ?, lease_until = ?"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (now + lease, now + lease, json.dumps([c.id for c in claimed])),
            )
        return claimed

    def record_attempts(
        self, conn: sqlite3.Connection, outcomes: list[DeliveryOutcome], disable_after: float
    ) -> list[tuple[str, DeliveryStatus]]:
        now = self.clock.now()
        schedule = self.retry_schedule
        succeeded_subs: set[str] = set()
        # The common case, a 2xx, a few statements for the whole batch: mark every one delivered that still
        # waits (one UPDATE per status code), then log their attempts. Others go one by one below.
        delivered = self._record_successes(
            conn, [o for o in outcomes if o.status_code is not None and 200 <= o.status_code < 300], now
        )
        results: list[tuple[str, DeliveryStatus]] = []
        for out in outcomes:
            if out.status_code is not None and 200 <= out.status_code < 300:
                if out.delivery_id in delivered:
                    sub = delivered.pop(out.delivery_id)
                    if sub:
                        succeeded_subs.add(sub)
                    results.append((out.delivery_id, "succeeded"))
                continue
            row = conn.execute("SELECT * FROM deliveries WHERE id = ?", (out.delivery_id,)).fetchone()
            if row is None or row["status"] in ("succeeded", "dead"):
                continue
            error = out.error[:ERROR_TEXT_LIMIT] if out.error else None
            conn.execute(
                "INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, latency_ms, error,"
                " response_body) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    out.delivery_id,
                    now - out.latency,
                    out.status_code,
                    out.latency * 1000.0,
                    error,
                    _clip(out.response_body),
                ),
            )
            attempts = row["attempts"] + 1
            # The place in the schedule: a manual retry starts it again (retry_base) without
            # forgetting the attempts made before.
            step = attempts - row["retry_base"]
            sub_id = row["subscription_id"]
            code = out.status_code
            status: DeliveryStatus
            next_at: float | None
            if code is not None and 200 <= code < 300:
                status, next_at = "succeeded", None
                if sub_id:
                    conn.execute(
                        # Only write when it changes something that matters (not on every success).
                        "UPDATE subscriptions SET last_success_at = ?, failing_since = NULL WHERE id = ?"
                        " AND (failing_since IS NOT NULL OR last_success_at IS NULL OR last_success_at < ?)",
                        (now, sub_id, now - 60.0),
                    )
            elif code == 410:
                status, next_at = "dead", None
                error = error or "410 Gone: the endpoint asked to stop"
                if sub_id:
                    self.disable_subscription(conn, sub_id, "endpoint answered 410 Gone")
            elif step >= len(schedule):
                status, next_at = "dead", None
            else:
                delay = schedule[step] * self.rng.uniform(0.8, 1.2)
                if out.retry_after is not None and code in (429, 503):
                    delay = max(delay, min(out.retry_after, max(schedule)))
                status, next_at = "failed", now + delay
            if status != "succeeded" and sub_id:
                self.note_failure(conn, sub_id, now, disable_after)
            conn.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, lease_until = NULL,"
                " last_status_code = ?, last_error = ?, updated_at = ?, delivered_at = ? WHERE id = ?",
                (
                    status,
                    attempts,
                    next_at,
                    code,
                    error,
                    now,
                    now if status == "succeeded" else None,
                    out.delivery_id,
                ),
            )
            results.append((out.delivery_id, status))
        for sub_id in succeeded_subs:
            conn.execute(
                # Only write when it changes something that matters (not on every success).
                "UPDATE subscriptions SET last_success_at = ?, failing_since = NULL WHERE id = ?"
                " AND (failing_since IS NOT NULL OR last_success_at IS NULL OR last_success_at < ?)",
                (now, sub_id, now - 60.0),
            )
        return results

    @staticmethod
    def _record_successes(
        conn: sqlite3.Connection, outcomes: list[DeliveryOutcome], now: float
    ) -> dict[str, str | None]:
        """Mark 2xx outcomes succeeded where the row still waits and log their attempts.

        Returns {delivery id: subscription id} of the rows this changed; an outcome for a row already
        succeeded or dead (recorded before, or a duplicate in the batch) changes nothing and logs nothing.
        """
        by_code: dict[int, list[str]] = {}
        for out in outcomes:
            assert out.status_code is not None
            by_code.setdefault(out.status_code, []).append(out.delivery_id)
        delivered: dict[str, str | None] = {}
        cursor = conn.cursor()
        cursor.row_factory = None  # (id, subscription_id) tuples
        for code, delivery_ids in by_code.items():
            rows = cursor.execute(
                "UPDATE deliveries SET status = 'succeeded', attempts = attempts + 1, next_attempt_at = NULL,"
                " lease_until = NULL, last_status_code = ?, last_error = NULL, updated_at = ?, delivered_at = ?"
                " WHERE id IN (SELECT value FROM json_each(?)) AND status IN ('pending', 'failed')"
                " RETURNING id, subscription_id",
                (code, now, now, json.dumps(delivery_ids)),
            ).fetchall()
            delivered.update(rows)
        logged: set[str] = set()
        attempts = []
        for out in outcomes:
            if out.delivery_id in delivered and out.delivery_id not in logged:
                logged.add(out.delivery_id)
                attempts.append(
                    (
                        out.delivery_id,
                        now - out.latency,
                        out.status_code,
                        out.latency * 1000.0,
                        _clip(out.response_body),
                    )
                )
        conn.executemany(
            "INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, latency_ms, error,"
            " response_body) VALUES (?, ?, ?, ?, NULL, ?)",
            attempts,
        )
        return delivered

    def note_failure(self, conn: sqlite3.Connection, sub_id: str, now: float, disable_after: float) -> None:
        row = conn.execute(
            "SELECT failing_since, enabled FROM subscriptions WHERE id = ?", (sub_id,)
        ).fetchone()
        if row is None or not row["enabled"]:
            return
        if row["failing_since"] is None:
            conn.execute("UPDATE subscriptions SET failing_since = ? WHERE id = ?", (now, sub_id))
        elif now - row["failing_since"] >= disable_after:
            self.disable_subscription(conn, sub_id, "no successful delivery for too long")

    def disable_subscription(self, conn: sqlite3.Connection, sub_id: str, reason: str) -> None:
        now = self.clock.now()
        row = conn.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone()
        if row is None or not row["enabled"]:
            return
        conn.execute(
            "UPDATE subscriptions SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE id = ?",
            (reason, now, sub_id),
        )
        conn.execute(
            "UPDATE deliveries SET status = 'dead', next_attempt_at = NULL, lease_until = NULL, last_error = ?,"
            " updated_at = ? WHERE subscription_id = ? AND status IN ('pending', 'failed') AND lease_until IS NULL",
            (f"subscription disabled: {reason}", now, sub_id),
        )
        self.forget_subscriptions()
        sub = _subscription(
            conn.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone(), self.box
        )
        self.emit(
            conn,
            "sorahook.subscription.disabled",
            sub.to_api(),
            source="delivery",
            exclude_subscription=sub_id,
        )


class _WebhookOp:
    """The write of one webhook: an op like any other, which the writer can store with its neighbours."""

    __slots__ = ("hook", "ops")

    def __init__(self, ops: _Ops, hook: IncomingWebhook) -> None:
        self.ops = ops
        self.hook = hook

    def __call__(self, conn: sqlite3.Connection) -> WebhookOutcome:
        return self.ops.record_webhooks(conn, [self.hook])[0]


class SqliteStore:
    """The job store on one SQLite file. Open with `await SqliteStore.open(...)`; close with `aclose()`."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock,
        retry_schedule: tuple[float, ...] = (0.0, 5.0, 300.0),
        callback_secret: str | None = None,
        disable_after: float = 5 * 86400.0,
        box: SecretBox | None = None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.disable_after = disable_after
        self._ops = _Ops(clock, retry_schedule, callback_secret, box)
        self._writer_conn: aiosqlite.Connection | None = None
        self._reader_conn: aiosqlite.Connection | None = None
        self._checkpoint_conn: aiosqlite.Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.wal_catch_up_frames = WAL_CATCH_UP_FRAMES
        self._catch_up = False
        self._queue: asyncio.Queue[tuple[Op[Any], asyncio.Future[Any]] | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self.signals = Signals(asyncio.Event(), asyncio.Event(), asyncio.Event())
        self.commits = 0
        self.committed_ops = 0
        # Called after a commit for each job that reached a terminal state (the duration metric).
        self.on_job_finished: Callable[[str, str, float], None] | None = None

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Clock,
        retry_schedule: tuple[float, ...] = (0.0, 5.0, 300.0),
        callback_secret: str | None = None,
        disable_after: float = 5 * 86400.0,
        box: SecretBox | None = None,
    ) -> SqliteStore:
        store = cls(
            path,
            clock=clock,
            retry_schedule=retry_schedule,
            callback_secret=callback_secret,
            disable_after=disable_after,
            box=box,
        )
        await store._start()
        return store

    async def _connect(self) -> aiosqlite.Connection:
        # The writer's connection is used from two threads in turn (see `_run_batch_here`).
        conn = await aiosqlite.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        # Each operation in a batch runs in its own savepoint, whose undo pages go to a temp file by
        # default: in memory they cost a copy instead of a write (the jobs insert: ~75 -> ~47 us).
        await conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    async def _start(self) -> None:
        # The store's threads (reads, BEGIN/COMMIT, checkpoints) and the event loop share the GIL. With
        # the default 5 ms switch interval, the loop can wait up to 5 ms for it each time it hands it over;
        # 0.5 ms keeps request latency and delivery rate up.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        owner_only(self.path)
        self._writer_conn = await self._connect()
        now = self.clock.now()
        await _in_thread(self._writer_conn, lambda c: apply_migrations(c, now))
        if self._ops.box is not None:
            await self._write(self._seal_stored_secrets)
        self._reader_conn = await self._connect()
        self._checkpoint_conn = await self._connect()
        # The writer never checkpoints: SQLite's automatic checkpoint runs inside whichever COMMIT pushes
        # the WAL past 1,000 pages, copying and fsyncing the database file while that batch (and every
        # request waiting on it) waits. A checkpoint on its own connection and thread does the same work
        # beside the writer (PASSIVE never blocks it).
        await self._writer_conn.execute("PRAGMA wal_autocheckpoint = 0")
        # When the WAL starts over, a file grown past this during a burst is cut back.
        await self._writer_conn.execute("PRAGMA journal_size_limit = 67108864")
        await self._write(self._release_leases)
        self._writer_task = asyncio.create_task(self._writer_loop(), name="sorahook-store-writer")
        self._checkpoint_task = asyncio.create_task(self._checkpointer(), name="sorahook-store-checkpoint")

    @staticmethod
    async def migrate(path: Path, now: float) -> list[int]:
        """Apply migrations to the file and return the versions applied (for `sorahook migrate`)."""
        owner_only(path)
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        try:

            def run(c: sqlite3.Connection) -> list[int]:
                c.execute("PRAGMA journal_mode = WAL").fetchall()
                return apply_migrations(c, now)

            return await _in_thread(conn, run)
        finally:
            await conn.close()

    def _seal_stored_secrets(self, conn: sqlite3.Connection) -> None:
        """Seal, bound to their row, the secrets stored in plaintext or sealed before that binding.

        A Python step rather than a migration: SQL has no key. It runs at every start and finds nothing
        to do once every row is sealed.
        """
        box = self._ops.box
        assert box is not None
        rows = conn.execute(
            "SELECT id, secret, previous_secret FROM subscriptions WHERE secret NOT LIKE 'sealed:v2:%'"
            " OR (previous_secret IS NOT NULL AND previous_secret NOT LIKE 'sealed:v2:%')"
        ).fetchall()
        unopened = 0
        for sub_id, secret, previous in rows:
            try:
                sealed = box.reseal(secret, sub_id)
                sealed_previous = box.reseal(previous, sub_id) if previous else previous
            except SealError:
                unopened += 1
                continue
            conn.execute(
                "UPDATE subscriptions SET secret = ?, previous_secret = ? WHERE id = ?",
                (sealed, sealed_previous, sub_id),
            )
        if rows:
            log.info("sealed stored subscription secrets", extra={"sealed": len(rows) - unopened})
        if unopened:
            log.warning(
                "subscription secrets that do not open with SORAHOOK_SECRET_KEY were left as they are;"
                " their deliveries will fail until the right key is set or the secret is rotated",
                extra={"subscriptions": unopened},
            )
        self._ops.forget_subscriptions()

    def _release_leases(self, conn: sqlite3.Connection) -> None:
        """At start this process owns the file: claims left by a dead process are free again at once."""
        now = self.clock.now()
        conn.execute(
            "UPDATE deliveries SET next_attempt_at = ?, lease_until = NULL"
            " WHERE lease_until IS NOT NULL AND status IN ('pending', 'failed')",
            (now,),
        )
        conn.execute(
            "UPDATE jobs SET next_submit_at = ? WHERE status = 'pending' AND next_submit_at > ?", (now, now)
        )
        conn.execute("UPDATE jobs SET refresh_at = ? WHERE refresh_at > ?", (now, now))

    async def aclose(self) -> None:
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint_task
            self._checkpoint_task = None
        if self._writer_task is not None:
            await self._queue.put(None)
            await self._writer_task
            self._writer_task = None
        for conn in (self._checkpoint_conn, self._reader_conn, self._writer_conn):
            if conn is not None:
                await conn.close()  # the last one to close checkpoints the rest of the WAL
        self._checkpoint_conn = self._reader_conn = self._writer_conn = None

    async def checkpoint(self) -> tuple[int, int]:
        """Copy committed WAL frames into the database file: (frames in the WAL, frames copied)."""
        if self._checkpoint_conn is None:
            raise StoreClosed("the store is closed")
        log_frames, copied = await _in_thread(self._checkpoint_conn, _passive_checkpoint)
        # Under steady writes this checkpoint never catches the writer (new frames land while it copies),
        # and the WAL only starts over when a write begins with every frame copied: a 3-minute soak left
        # a 577 MB WAL. Past WAL_CATCH_UP_FRAMES the writer copies the few remaining frames itself,
        # between two batches, so its next write starts the WAL over.
        if log_frames >= self.wal_catch_up_frames:
            self._catch_up = True
        return log_frames, copied

    async def _checkpointer(self) -> None:
        """Checkpoint after commits, off the writer's path; a failed checkpoint is retried next time."""
        seen = self.commits
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if self.commits == seen:
                continue
            seen = self.commits
            try:
                await self.checkpoint()
            except sqlite3.Error as exc:
                log.warning("checkpoint failed; will retry", extra={"error": str(exc)})

    @property
    def writer_alive(self) -> bool:
        return self._writer_task is not None and not self._writer_task.done()

    # -- the group-commit writer ------------------------------------------------------------------

    async def _write(self, op: Op[T]) -> T:
        if self._writer_task is None:
            # Before the writer starts (start-up) or after it stopped: run alone, same transaction rules.
            if self._writer_conn is None:
                raise StoreClosed("the store is closed")
            results = await _in_thread(self._writer_conn, lambda c: self._run_batch(c, [op]))
            self._raise_signals()
            outcome = results[0]
            if isinstance(outcome, BaseException):
                raise outcome
            return cast(T, outcome)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, future))  # unbounded: never waits (and builds no coroutine)
        return await future

    async def _writer_loop(self) -> None:
        assert self._writer_conn is not None
        conn = self._writer_conn
        stopping = False
        while not stopping:
            item = await self._queue.get()
            await self._gather()
            batch: list[tuple[Op[Any], asyncio.Future[Any]]] = []
            if item is None:
                stopping = True
            else:
                batch.append(item)
            while len(batch) < MAX_BATCH and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stopping = True
                    continue
                batch.append(more)
            if not batch:
                continue
            ops = [op for op, _ in batch]
            try:
                results = await self._run_batch_here(conn, ops)
            except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
                continue
            self.commits += 1
            self.committed_ops += len(batch)
            self._raise_signals()
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
            if self._catch_up:
                self._catch_up = False
                with contextlib.suppress(sqlite3.Error):  # the checkpointer tries again later
                    await _in_thread(conn, _passive_checkpoint)

    async def _gather(self) -> None:
        """Let writes on their way join the batch: give the loop a turn while the queue keeps growing.

        Under load the loop is busy parsing and verifying the next requests when a commit returns; a
        batch taken at once held about half of them. Each turn costs microseconds, and a queue that did
        not grow in a turn (a quiet moment) ends the wait: the batch is larger only when writes arrive.
        """
        for _ in range(GATHER_TURNS):
            size = self._queue.qsize()
            await asyncio.sleep(0)
            if self._queue.qsize() == size:
                return

    async def _run_batch_here(self, conn: aiosqlite.Connection, ops: list[Op[Any]]) -> list[Any]:
        """One batch: BEGIN and COMMIT on the store's thread, the operations on the event loop's.

        BEGIN may wait for the file lock and COMMIT waits for fsync, so they run off the loop. The
        operations themselves are SQLite calls of tens of microseconds: run on the store's thread, each
        call hands the GIL to the busy loop and waits up to a switch interval to get it back, which
        stretched a batch of a few webhooks to milliseconds at 1,000 webhooks/s. On the loop they cost
        the same CPU and no waiting. The connection is used by one side at a time: the writer task
        awaits each step before the next.
        """
        raw: sqlite3.Connection = conn._conn  # type: ignore[attr-defined]
        await _in_thread(conn, _begin)
        try:
            results = self._run_ops(raw, ops)
        except BaseException:
            await _in_thread(conn, self._rollback)
            raise
        await _in_thread(conn, self._commit)
        return results

    def _run_batch(self, conn: sqlite3.Connection, ops: list[Op[Any]]) -> list[Any]:
        """The same batch run entirely on the calling thread (before the writer task starts)."""
        _begin(conn)
        try:
            results = self._run_ops(conn, ops)
        except BaseException:
            self._rollback(conn)
            raise
        self._commit(conn)
        return results

    def _run_ops(self, conn: sqlite3.Connection, ops: list[Op[Any]]) -> list[Any]:
        """Each op's result (or its exception) in order, inside the open transaction.

        Operations almost never fail, and a savepoint per operation costs about a fifth of a webhook's
        SQL time. So a batch first runs under one savepoint; only if an operation raises is that rolled
        back and the batch run again with a savepoint around each operation, so the failing one leaves
        its neighbours intact. Operations are plain functions of the connection (any Python state they
        touch is the `_Ops` bookkeeping reset here), so running them twice is safe.
        """
        if len(ops) > 1:
            finished = len(self._ops.finished)
            conn.execute("SAVEPOINT batch")
            try:
                results = self._run_grouped(conn, ops)
            except Exception:
                conn.execute("ROLLBACK TO batch")
                self._ops.rolled_back(finished)
            else:
                conn.execute("RELEASE batch")
                return results
            conn.execute("RELEASE batch")
        results = []
        for op in ops:
            conn.execute("SAVEPOINT op")
            finished = len(self._ops.finished)
            try:
                results.append(op(conn))
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                self._ops.rolled_back(finished)
                results.append(exc)
            conn.execute("RELEASE op")
        return results

    def _run_grouped(self, conn: sqlite3.Connection, ops: list[Op[Any]]) -> list[Any]:
        """Each op's result in order; a run of webhooks next to each other is stored in one call."""
        results: list[Any] = []
        i = 0
        while i < len(ops):
            op = ops[i]
            if not isinstance(op, _WebhookOp):
                results.append(op(conn))
                i += 1
                continue
            j = i + 1
            while j < len(ops) and isinstance(ops[j], _WebhookOp):
                j += 1
            run = cast("list[_WebhookOp]", ops[i:j])
            results.extend(self._ops.record_webhooks(conn, [w.hook for w in run]))
            i = j
        return results

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        self._ops.rolled_back()  # nothing of this batch happened

    def _commit(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise

    def _raise_signals(self) -> None:
        ops = self._ops
        if ops.flag_deliveries:
            self.signals.deliveries.set()
        if ops.flag_submissions:
            self.signals.submissions.set()
        if ops.flag_refreshes:
            self.signals.refreshes.set()
        ops.flag_deliveries = ops.flag_submissions = ops.flag_refreshes = False
        finished, ops.finished = ops.finished, []
        if self.on_job_finished is not None:
            for kind, status, seconds in finished:
                self.on_job_finished(kind, status, seconds)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_conn is None:
            raise StoreClosed("the store is closed")
        return await _in_thread(self._reader_conn, fn)

    # -- health -----------------------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            await self._read(lambda c: c.execute("SELECT 1").fetchone())
        except Exception:
            return False
        return self.writer_alive

    # -- webhooks ---------------------------------------------------------------------------------

    async def record_webhook(self, hook: IncomingWebhook) -> WebhookOutcome:
        """Store a verified webhook: dedupe, event row, job change and outbox rows in one transaction."""
        return await self._write(_WebhookOp(self._ops, hook))

    async def count_received(self) -> int:
        return await self._read(
            lambda c: int(c.execute("SELECT COUNT(*) FROM received_webhooks").fetchone()[0])
        )

    # -- jobs -------------------------------------------------------------------------------------

    async def get_job(self, key: str) -> Job | None:
        def read(c: sqlite3.Connection) -> Job | None:
            row = self._ops.job_row(c, key)
            return _job(row) if row is not None else None

        return await self._read(read)

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

        return await self._read(read)

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

        return await self._read(read)

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

    async def create_job(
        self,
        *,
        request: dict[str, Any],
        callback_url: str | None,
        metadata: dict[str, str],
        idempotency_key: str | None,
    ) -> tuple[Job, bool]:
        """One `pending` video job with no quota to check, through the API's own path (`create_api_jobs`)."""
        jobs, created = await self.create_api_jobs(
            [NewJob(request, callback_url, metadata, client=None, estimated_cost_usd=None)],
            quotas=Quotas(),
            idempotency_key=idempotency_key,
        )
        return jobs[0], created

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
                    delay = min(cap, base_delay * 2 ** min(misses - 1, 30))
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
            ordering = f"{sub.id}:{ev['job_id']}" if (sub.ordered and ev["job_id"]) else None
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
        return await self._read(
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

        return await self._read(read)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:

        def read(c: sqlite3.Connection) -> Delivery | None:
            row = c.execute(
                "SELECT d.*, s.url AS sub_url FROM deliveries d LEFT JOIN subscriptions s"
                " ON s.id = d.subscription_id WHERE d.id = ?",
                (delivery_id,),
            ).fetchone()
            return _with_attempts(c, [row])[0] if row is not None else None

        return await self._read(read)

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

    # -- metrics ----------------------------------------------------------------------------------

    async def job_counts(self) -> list[tuple[str, str, int]]:
        return await self._read(
            lambda c: [
                (r[0], r[1], int(r[2]))
                # Kept by triggers in the writing transactions (migration 7), not counted here.
                for r in c.execute("SELECT kind, status, n FROM job_counts WHERE n > 0").fetchall()
            ]
        )

    async def subscription_counts(self) -> tuple[int, int]:
        """(enabled, disabled) subscriptions: few rows, counted at scrape time."""

        def read(c: sqlite3.Connection) -> tuple[int, int]:
            row = c.execute("SELECT TOTAL(enabled != 0), TOTAL(enabled = 0) FROM subscriptions").fetchone()
            return int(row[0]), int(row[1])

        return await self._read(read)

    # -- retention --------------------------------------------------------------------------------

    # Each a range seek on an index (migration 6); tests/test_retention.py holds the plans to that.
    PRUNE_DELIVERIES_SQL = (
        "SELECT id FROM deliveries INDEXED BY deliveries_finished"
        " WHERE status IN ('succeeded', 'dead') AND updated_at < ? LIMIT ?"
    )
    PRUNE_RECEIVED_SQL = (
        "SELECT id, webhook_id FROM events INDEXED BY events_received"
        " WHERE direction = 'received' AND created_at < ? LIMIT ?"
    )
    PRUNE_EMITTED_SQL = (
        "SELECT e.id FROM events e INDEXED BY events_emitted WHERE e.direction = 'emitted' AND e.created_at < ?"
        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id) LIMIT ?"
    )

    async def prune(self, older_than: float, batch: int = 500) -> int:
        """Delete one small batch of old history; jobs are kept. Returns how many rows went.

        Old received events with their dedupe rows, emitted events whose deliveries are all gone, and
        finished deliveries with their attempts all go once older than `older_than`. An event that still
        has a delivery pending or failing is kept whatever its age, so nothing waiting to be sent is lost.
        """

        def op(c: sqlite3.Connection) -> int:
            removed = 0
            old_deliveries = [r[0] for r in c.execute(self.PRUNE_DELIVERIES_SQL, (older_than, batch))]
            if old_deliveries:
                ids = json.dumps(old_deliveries)
                removed += c.execute(
                    "DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT value FROM json_each(?))",
                    (ids,),
                ).rowcount
                removed += c.execute(
                    "DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?))", (ids,)
                ).rowcount
            received = c.execute(self.PRUNE_RECEIVED_SQL, (older_than, batch)).fetchall()
            if received:
                removed += c.execute(
                    "DELETE FROM received_webhooks WHERE webhook_id IN (SELECT value FROM json_each(?))",
                    (json.dumps([r[1] for r in received if r[1] is not None]),),
                ).rowcount
            emitted = [r[0] for r in c.execute(self.PRUNE_EMITTED_SQL, (older_than, batch))]
            old_events = [r[0] for r in received] + emitted
            if old_events:
                removed += c.execute(
                    "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(old_events),),
                ).rowcount
            return removed

        return await self._write(op)

    # -- issue 8: cost, quotas, usage, batches, progress -----------------------------------------

    async def create_api_jobs(
        self,
        jobs: list[NewJob],
        *,
        quotas: Quotas,
        idempotency_key: str | None = None,
        batch: bool = False,
        request_hash: str | None = None,
    ) -> tuple[list[Job], bool]:
        """Store new `pending` video jobs, all or none, in one transaction with the quota checks.

        The checks and the inserts run in the same write, and the single writer runs writes one after
        another, so two requests racing for a client's last slot cannot both pass. Raises QuotaExceeded
        (nothing stored). The same idempotency key returns the same jobs and `False`: a single job's key
        is the job's own `idempotency_key`; a batch's is a row in `batch_keys` naming its jobs in order.
        `request_hash` is the request body's fingerprint, kept with the key: the same key with another
        fingerprint raises IdempotencyKeyReused (a key stored without one replays, as before).
        """

        def op(c: sqlite3.Connection) -> tuple[list[Job], bool]:
            if idempotency_key is not None:
                found = self._jobs_for_key(c, idempotency_key, batch)
                if found is not None:
                    earlier, earlier_hash = found
                    if earlier_hash is not None and request_hash is not None and earlier_hash != request_hash:
                        raise IdempotencyKeyReused(idempotency_key, [j.id for j in earlier])
                    return earlier, False
                # A key already used on the other route (a batch's for a single job, or the other way)
                # names another request: refused, never a second set of jobs.
                other = self._jobs_for_key(c, idempotency_key, not batch)
                if other is not None:
                    raise IdempotencyKeyReused(idempotency_key, [j.id for j in other[0]])
            now = self.clock.now()
            if quotas.any:
                self._check_quotas(c, jobs, quotas, now)
            created: list[Job] = []
            for spec in jobs:
                row = self._ops.insert_job(
                    c,
                    kind="video",
                    status="pending",
                    origin="api",
                    request=spec.request,
                    callback_url=spec.callback_url,
                    metadata=spec.metadata,
                    idempotency_key=None if batch else idempotency_key,
                    next_submit_at=now,
                )
                c.execute(
                    "UPDATE jobs SET client = ?, estimated_cost_usd = ?, request_hash = ? WHERE id = ?",
                    (
                        spec.client,
                        spec.estimated_cost_usd,
                        None if batch or idempotency_key is None else request_hash,
                        row["id"],
                    ),
                )
                created.append(_job(c.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()))
            if batch and idempotency_key is not None:
                c.execute(
                    "INSERT INTO batch_keys (idempotency_key, job_ids, created_at, request_hash)"
                    " VALUES (?, ?, ?, ?)",
                    (idempotency_key, json.dumps([j.id for j in created]), now, request_hash),
                )
            return created, True

        return await self._write(op)

    @staticmethod
    def _jobs_for_key(c: sqlite3.Connection, key: str, batch: bool) -> tuple[list[Job], str | None] | None:
        """The jobs an idempotency key made, with the fingerprint of the body that made them."""
        if not batch:
            row = c.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
            return ([_job(row)], row["request_hash"]) if row is not None else None
        found = c.execute(
            "SELECT job_ids, request_hash FROM batch_keys WHERE idempotency_key = ?", (key,)
        ).fetchone()
        if found is None:
            return None
        rows = [c.execute("SELECT * FROM jobs WHERE id = ?", (i,)).fetchone() for i in json.loads(found[0])]
        return [_job(r) for r in rows if r is not None], found[1]

    def _check_quotas(self, c: sqlite3.Connection, jobs: list[NewJob], quotas: Quotas, now: float) -> None:
        """Raise QuotaExceeded for the first limit the jobs would break, client by client.

        Jobs first heard of by webhook belong to no client (they have no metadata), so they never count
        toward the limits of the clients that send no client key.
        """
        wanted: dict[str | None, tuple[int, float]] = {}
        for spec in jobs:
            n, usd = wanted.get(spec.client, (0, 0.0))
            wanted[spec.client] = (n + 1, usd + (spec.estimated_cost_usd or 0.0))
        for client, (n, usd) in wanted.items():
            who = client_label(client)
            if quotas.concurrent is not None:
                active = c.execute(
                    "SELECT COUNT(*) FROM jobs INDEXED BY jobs_client_active WHERE client IS ?"
                    " AND status IN ('pending', 'queued', 'in_progress') AND origin != 'webhook'",
                    (client,),
                ).fetchone()[0]
                if active + n > quotas.concurrent:
                    raise QuotaExceeded(
                        "concurrent_jobs",
                        f"client {who} has {active} unfinished job(s); {n} more would pass its limit of"
                        f" {quotas.concurrent} concurrent jobs (SORAHOOK_QUOTA_CONCURRENT)",
                        CONCURRENT_RETRY_AFTER,
                    )
            if quotas.per_hour is not None:
                window = (client, now - HOUR)
                recent = c.execute(
                    "SELECT COUNT(*) FROM jobs INDEXED BY jobs_client_created"
                    " WHERE client IS ? AND created_at > ? AND origin != 'webhook'",
                    window,
                ).fetchone()[0]
                if recent + n > quotas.per_hour:
                    created = [
                        r[0]
                        for r in c.execute(
                            "SELECT created_at FROM jobs INDEXED BY jobs_client_created"
                            " WHERE client IS ? AND created_at > ?"
                            " AND origin != 'webhook' ORDER BY created_at",
                            window,
                        ).fetchall()
                    ]
                    raise QuotaExceeded(
                        "jobs_per_hour",
                        f"client {who} created {recent} job(s) in the last hour; {n} more would pass its"
                        f" limit of {quotas.per_hour} jobs per hour (SORAHOOK_QUOTA_PER_HOUR)",
                        per_hour_retry_after(created, n, quotas.per_hour, now),
                    )
            if quotas.daily_usd is not None:
                # Jobs that failed or were cancelled before reaching OpenAI never cost anything.
                spending = (
                    " FROM jobs INDEXED BY jobs_client_created WHERE client IS ? AND created_at > ?"
                    " AND origin != 'webhook' AND estimated_cost_usd IS NOT NULL"
                    " AND NOT (status IN ('failed', 'cancelled') AND resource_id IS NULL)"
                )
                window = (client, now - DAY)
                spent = float(c.execute("SELECT TOTAL(estimated_cost_usd)" + spending, window).fetchone()[0])
                if spent + usd > quotas.daily_usd + 1e-9:
                    rows = c.execute(
                        "SELECT created_at, estimated_cost_usd" + spending + " ORDER BY created_at", window
                    ).fetchall()
                    raise QuotaExceeded(
                        "daily_spend_usd",
                        f"client {who} has an estimated ${spent:.4f} of videos in the last 24 h; ${usd:.4f}"
                        f" more would pass its limit of ${quotas.daily_usd:.2f} a day (SORAHOOK_QUOTA_DAILY_USD)",
                        daily_retry_after([(r[0], r[1]) for r in rows], usd, quotas.daily_usd, now),
                    )

    async def usage(self, *, since: float | None, until: float | None, client_key: str) -> dict[str, Any]:
        """Estimated cost and job counts of the jobs created in [since, until), by model, status and client."""

        def read(c: sqlite3.Connection) -> dict[str, Any]:
            rows = c.execute(
                "SELECT COALESCE(json_extract(request, '$.model'), json_extract(result, '$.model')) AS model,"
                " status, json_extract(metadata, ?) AS client, COUNT(*) AS jobs,"
                " TOTAL(estimated_cost_usd) AS usd FROM jobs"
                " WHERE created_at >= ? AND created_at < ? GROUP BY 1, 2, 3",
                (
                    '$."' + client_key + '"',
                    since if since is not None else float("-inf"),
                    until if until is not None else float("inf"),
                ),
            ).fetchall()
            groups: dict[str, dict[str, dict[str, Any]]] = {"by_model": {}, "by_status": {}, "by_client": {}}
            total_jobs, total_usd = 0, 0.0
            for row in rows:
                total_jobs += row["jobs"]
                total_usd += row["usd"]
                keys = (
                    ("by_model", row["model"] if isinstance(row["model"], str) else "(none)"),
                    ("by_status", row["status"]),
                    ("by_client", row["client"] if isinstance(row["client"], str) else "(none)"),
                )
                for group, key in keys:
                    entry = groups[group].setdefault(key, {"jobs": 0, "estimated_cost_usd": 0.0})
                    entry["jobs"] += row["jobs"]
                    entry["estimated_cost_usd"] += row["usd"]
            for entries in groups.values():
                for entry in entries.values():
                    entry["estimated_cost_usd"] = round(entry["estimated_cost_usd"], 4)
            return {
                "total_estimated_cost_usd": round(total_usd, 4),
                "jobs": total_jobs,
                **{name: dict(sorted(entries.items())) for name, entries in groups.items()},
            }

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

    # -- issue 9: archive -------------------------------------------------------------------------

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

    # -- console reads (service/ui) -----------------------------------------------------------------

    async def jobs_by_idempotency_key(self, key: str) -> list[Job]:
        """The job one POST /v1/jobs made under `key`, or every job of the batch made under it."""

        def read(c: sqlite3.Connection) -> list[Job]:
            found = self._jobs_for_key(c, key, False) or self._jobs_for_key(c, key, True)
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

        return await self._read(read)

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

        return await self._read(read)

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


def _archive(row: sqlite3.Row) -> Archive:
    return Archive(
        job_id=row["job_id"],
        variant=row["variant"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        size=row["size"],
        sha256=row["sha256"],
        uri=row["uri"],
        key=row["key"],
        content_type=row["content_type"],
        stored_at=row["stored_at"],
        error=row["error"],
    )
