"""Recording a run of verified webhooks in one set-based pass, inside the writer's transaction."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from service import ids
from service.domain import (
    Observation,
)
from service.domain.plan import webhook_observation
from service.store.records import (
    IncomingWebhook,
    Job,
    WebhookOutcome,
)
from service.store.sqlite.common import (
    _DEDUPE_INSERT,
    _DUPLICATE,
    ERROR_TEXT_LIMIT,
    _json_string,
    _Rows,
    log,
)
from service.store.sqlite.ops import OpsCore


class WebhookOps(OpsCore):
    """The webhook path of the writer's operations."""

    # -- webhooks: the inbox, then the apply -----------------------------------------------------

    def enqueue_webhooks(
        self, conn: sqlite3.Connection, hooks: list[IncomingWebhook], *, inbox: bool = True
    ) -> list[InboxEntry | None]:
        """Acknowledge verified webhooks: dedupe key and inbox row, nothing else (None: a duplicate).

        Set-based, because the writer hands over every webhook waiting in a batch at once: one dedupe
        lookup, and one executemany per table. The received event's id is made here, in arrival
        order, so a job's timeline reads in the order its webhooks came. Without `inbox` nothing is
        written: the caller applies the entries in the same transaction, and the apply writes each
        dedupe key beside its event, as one webhook at a time would.
        """
        now = self.clock.now()
        seen = {
            row[0]
            for row in conn.execute(
                "SELECT webhook_id FROM received_webhooks WHERE webhook_id IN (SELECT value FROM json_each(?))",
                (json.dumps([hook.webhook_id for hook in hooks]),),
            )
        }
        entries: list[InboxEntry | None] = []
        dedupe: list[tuple[str, str, float]] = []
        for hook in hooks:
            if hook.webhook_id in seen:  # before, or earlier in this run
                entries.append(None)
                continue
            seen.add(hook.webhook_id)
            if not inbox:  # applied in this transaction: the apply writes the dedupe key with its event
                entries.append(InboxEntry("", hook, now))
                continue
            entry = InboxEntry(ids.event_id(), hook, now)
            dedupe.append((hook.webhook_id, entry.event_row_id, now))
            entries.append(entry)
        if dedupe:
            conn.executemany(_DEDUPE_INSERT, dedupe)
            conn.executemany(
                _INBOX_INSERT,
                [
                    (
                        e.event_row_id,
                        e.hook.webhook_id,
                        e.hook.timestamp,
                        e.hook.event_id,
                        e.hook.type,
                        e.hook.resource_id,
                        e.hook.created_at,
                        e.hook.body,
                        e.received_at,
                    )
                    for e in entries
                    if e is not None
                ],
            )
            self.flag_inbox = True
        return entries

    def record_webhooks(self, conn: sqlite3.Connection, hooks: list[IncomingWebhook]) -> list[WebhookOutcome]:
        """Acknowledge and apply at once, in one transaction (callers that need the job at once)."""
        entries = self.enqueue_webhooks(conn, hooks, inbox=False)
        applied = iter(self.apply_webhooks(conn, [e for e in entries if e is not None]))
        return [_DUPLICATE if e is None else WebhookOutcome("accepted", next(applied)) for e in entries]

    def process_inbox(self, conn: sqlite3.Connection, limit: int) -> list[float]:
        """Apply the oldest `limit` inbox rows in received order; their received times (for the lag)."""
        rows = conn.execute("SELECT * FROM inbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        if not rows:
            return []
        finished = len(self.finished)
        conn.execute("SAVEPOINT inbox")
        try:
            self.apply_webhooks(conn, [_inbox_entry(r) for r in rows])
        except Exception:
            # One webhook that cannot be applied must not hold up every webhook after it: undo the run,
            # apply its webhooks one at a time, and set each that fails aside (kept, not lost).
            conn.execute("ROLLBACK TO inbox")
            self.rolled_back(finished)
            for row in rows:
                self.apply_or_set_aside(conn, row)
        conn.execute("RELEASE inbox")
        conn.execute("DELETE FROM inbox WHERE seq <= ?", (rows[-1]["seq"],))
        self.flag_applied = True
        return [r["received_at"] for r in rows]

    def apply_or_set_aside(self, conn: sqlite3.Connection, row: sqlite3.Row) -> None:
        """Apply one inbox row; if it fails, keep it in `inbox_failed` with the error, for the operator."""
        finished = len(self.finished)
        conn.execute("SAVEPOINT one")
        try:
            self.apply_webhooks(conn, [_inbox_entry(row)])
        except Exception as exc:
            conn.execute("ROLLBACK TO one")
            self.rolled_back(finished)
            conn.execute(
                "INSERT INTO inbox_failed SELECT inbox.*, ?, ? FROM inbox WHERE seq = ?",
                (f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT], self.clock.now(), row["seq"]),
            )
            log.error(
                "a webhook could not be applied and was set aside in inbox_failed",
                extra={"webhook_id": row["webhook_id"], "error": str(exc)},
            )
        conn.execute("RELEASE one")

    def apply_webhooks(self, conn: sqlite3.Connection, entries: list[InboxEntry]) -> list[str | None]:
        """Apply acknowledged webhooks in received order: event rows, job changes and outbox rows; the
        job id each one concerns (None for a type the state machine does not model).

        One job lookup for the run, and the rows gathered into one executemany per table (a statement
        per row cost more Python than SQL). A webhook about a job we already have goes through the
        planner on the row as stored, after the rows gathered so far are written: the job may be one
        this run made, or one an earlier webhook of the run moved.
        """
        now = self.clock.now()
        wanted = list({e.hook.resource_id for e in entries})
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
        applied: list[str | None] = []
        for entry in entries:
            hook, our = entry.hook, entry.event_row_id
            if not our:  # not through the inbox: the event id and dedupe key are made here, in turn
                our = ids.event_id()
                rows.webhooks.append((hook.webhook_id, our, now))
            job_id = job_ids.get(hook.resource_id)
            mapped = webhook_observation(hook.type, hook.created_at)
            obs: Observation | None = None
            job: Job | None = None
            if mapped is not None:
                kind, obs = mapped
                if job_id is None:
                    job = self.webhook_job(kind, hook.resource_id, obs, now, rows)
                    job_id = job_ids[hook.resource_id] = job.id
            rows.events.append(
                (
                    our,
                    "received",
                    hook.type,
                    job_id,
                    "webhook",
                    entry.received_at,
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
            applied.append(job_id)
        rows.write(conn)
        return applied


class InboxEntry:
    """A webhook acknowledged into the inbox: the id its received event row will have, when it came."""

    __slots__ = ("event_row_id", "hook", "received_at")

    def __init__(self, event_row_id: str, hook: IncomingWebhook, received_at: float) -> None:
        self.event_row_id = event_row_id
        self.hook = hook
        self.received_at = received_at


_INBOX_INSERT = (
    "INSERT INTO inbox (event_row_id, webhook_id, timestamp, event_id, type, resource_id, created_at, body,"
    " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _inbox_entry(r: sqlite3.Row) -> InboxEntry:
    hook = IncomingWebhook(
        r["webhook_id"],
        r["timestamp"],
        r["event_id"],
        r["type"],
        r["resource_id"],
        r["created_at"],
        r["body"],
        _data_of(r["body"]),
    )
    return InboxEntry(r["event_row_id"], hook, r["received_at"])


def _data_of(body: str) -> dict[str, Any]:
    """The event's `data` object, as the receiver checked it was."""
    data = json.loads(body).get("data")
    return data if isinstance(data, dict) else {}


class _WebhookOp:
    """The write of one webhook: an op like any other, which the writer can store with its neighbours.

    `apply` False (the receiver's) writes the inbox only; True also applies it in the same transaction.
    """

    __slots__ = ("apply", "hook", "ops")

    def __init__(self, ops: WebhookOps, hook: IncomingWebhook, *, apply: bool) -> None:
        self.ops = ops
        self.hook = hook
        self.apply = apply

    def __call__(self, conn: sqlite3.Connection) -> WebhookOutcome:
        return run_webhooks(self.ops, conn, [self.hook], apply=self.apply)[0]


def run_webhooks(
    ops: WebhookOps, conn: sqlite3.Connection, hooks: list[IncomingWebhook], *, apply: bool
) -> list[WebhookOutcome]:
    if apply:
        return ops.record_webhooks(conn, hooks)
    return [_DUPLICATE if e is None else _ACCEPTED for e in ops.enqueue_webhooks(conn, hooks)]


_ACCEPTED = WebhookOutcome("accepted")
