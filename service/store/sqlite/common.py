"""Shared pieces of the SQLite backend: limits, JSON helpers, the insert statements and the row buffer."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from service.store.records import (
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
    """Add new jobs, as (kind, status), to job_counts (the statement that inserts them keeps the count; no per-row trigger)."""
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
