"""The store's share of a webhook, measured without HTTP: bench.receiver runs this beside its servers.

Two figures, CPU time on the calling thread per webhook, in batches the size of the receiver bench's
connection count (the largest batch a closed loop of that many connections can hand the writer):

- `store_us`: the receiver's write path itself. `_Ops.record_webhooks` on ready-made verified webhooks
  (the same `video.completed` shape the load generator sends), BEGIN, COMMIT with synchronous=FULL, and
  a passive checkpoint every CHECKPOINT_EVERY webhooks, as the store's checkpointer does under load.
- `sql_us`: the same write set as SQL alone. Every statement and parameter list that path issued, recorded
  on a first file, replayed on a fresh file of the same schema: no Python but the loop that replays them.

`sql_us` is a floor for the SQL the receiver must run per webhook (dedupe, job, its timeline, outbox and
archive rows, with the indexes and job counts the other issues need); bench.receiver adds the bare
endpoint's own CPU per request to it, to show what is left of the budget a throughput ratio allows.

    python -m bench.store_floor [--batch 64] [--webhooks 24000] [--cpu 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from bench.loadgen import pin_to_cpu

CHECKPOINT_EVERY = 2_500  # about the store's 0.25 s checkpoint interval at ~10,000 webhooks/s
Call = tuple[bool, str, Any]  # (many, sql, parameters)


class Recorder:
    """A connection stand-in that runs each statement and keeps it, to replay elsewhere."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.calls: list[Call] = []

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        self.calls.append((False, sql, parameters))
        return self.conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any) -> sqlite3.Cursor:
        rows = list(parameters)
        self.calls.append((True, sql, rows))
        return self.conn.executemany(sql, rows)


def _webhooks(count: int, now: float) -> list[Any]:
    from service.store.records import IncomingWebhook

    hooks = []
    for _ in range(count):
        video = f"video_{os.urandom(12).hex()}"
        event = f"evt_{os.urandom(12).hex()}"
        data = {"id": video}
        body = json.dumps(
            {"id": event, "object": "event", "created_at": int(now), "type": "video.completed", "data": data}
        )
        hooks.append(
            IncomingWebhook(
                f"msg_{os.urandom(12).hex()}", int(now), event, "video.completed", video, int(now), body, data
            )
        )
    return hooks


def _fresh_file(directory: Path, name: str) -> sqlite3.Connection:
    """A file migrated by the store itself, archiving on as in bench.receiver's full server."""
    from service.clock import SystemClock
    from service.store.sqlite import SqliteStore

    path = directory / name

    async def prepare() -> None:
        store = await SqliteStore.open(path, clock=SystemClock())
        await store.configure_archive(("video", "thumbnail"))
        await store.aclose()

    asyncio.run(prepare())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


def _write_path(
    conn: sqlite3.Connection | Recorder, hooks: list[Any], batch: int
) -> tuple[float, list[list[Call]]]:
    """CPU seconds of the write path over `hooks`; with a Recorder, each batch's statements too."""
    from service.clock import SystemClock
    from service.store.sqlite import _Ops

    ops = _Ops(SystemClock(), (1.0,), None, None)
    ops.archive_variants = ("video", "thumbnail")
    raw = conn.conn if isinstance(conn, Recorder) else conn
    batches: list[list[Call]] = []
    spent = 0.0
    for start in range(0, len(hooks), batch):
        started = time.thread_time()
        raw.execute("BEGIN IMMEDIATE")
        ops.record_webhooks(cast(sqlite3.Connection, conn), hooks[start : start + batch])
        raw.execute("COMMIT")
        if (start + batch) % CHECKPOINT_EVERY < batch:
            raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        spent += time.thread_time() - started
        ops.finished.clear()
        if isinstance(conn, Recorder):
            batches.append(conn.calls)
            conn.calls = []
    return spent, batches


def _replay(conn: sqlite3.Connection, batches: list[list[Call]], batch: int) -> float:
    spent = 0.0
    done = 0
    for calls in batches:
        started = time.thread_time()
        conn.execute("BEGIN IMMEDIATE")
        for many, sql, parameters in calls:
            if many:
                conn.executemany(sql, parameters)
            else:
                conn.execute(sql, parameters).fetchall()
        conn.execute("COMMIT")
        done += batch
        if done % CHECKPOINT_EVERY < batch:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        spent += time.thread_time() - started
    return spent


def _row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    tables = ("received_webhooks", "jobs", "events", "deliveries", "archives", "job_counts")
    return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}


def measure(batch: int, webhooks: int) -> dict[str, float]:
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="sorahook-floor-") as tmp:
        directory = Path(tmp)
        timed = _fresh_file(directory, "store.db")
        store_s, _ = _write_path(timed, _webhooks(webhooks, now), batch)
        timed.close()
        recorder = Recorder(_fresh_file(directory, "record.db"))
        _, batches = _write_path(recorder, _webhooks(webhooks, now), batch)
        replayed = _fresh_file(directory, "replay.db")
        sql_s = _replay(replayed, batches, batch)
        recorded, written = _row_counts(recorder.conn), _row_counts(replayed)
        recorder.conn.close()
        replayed.close()
    if recorded != written or recorded["jobs"] != webhooks:
        raise SystemExit(f"bench.store_floor: the replay wrote {written}, the write path {recorded}")
    return {
        "batch": batch,
        "webhooks": webhooks,
        "store_us": store_s / webhooks * 1e6,
        "sql_us": sql_s / webhooks * 1e6,
    }


def child(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_floor", description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--webhooks", type=int, default=24_000)
    parser.add_argument(
        "--cpu", type=int, default=0, help="the core to run on (bench.receiver's server core)"
    )
    args = parser.parse_args(argv)
    pin_to_cpu(args.cpu)
    print(json.dumps(measure(args.batch, args.webhooks)), flush=True)


if __name__ == "__main__":
    child()
