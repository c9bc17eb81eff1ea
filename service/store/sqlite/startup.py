"""What runs once when a SQLite file is opened: migrations, sealing old secrets, freeing dead claims."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service.secretbox import SealError, SecretBox
from service.store.sqlite.common import log, owner_only
from service.store.sqlite.connection import Connection
from service.store.sqlite.migrations import apply_migrations


async def migrate_file(path: Path, now: float) -> list[int]:
    """Apply migrations to the file and return the versions applied (for `sorahook migrate`)."""
    owner_only(path)
    conn = await Connection.open(path)
    try:

        def run(c: sqlite3.Connection) -> list[int]:
            c.execute("PRAGMA journal_mode = WAL").fetchall()
            return apply_migrations(c, now)

        return await conn.run(run)
    finally:
        await conn.close()


def seal_stored_secrets(conn: sqlite3.Connection, box: SecretBox | None) -> None:
    """Seal, bound to their row, the secrets stored in plaintext or sealed before that binding.

    A Python step rather than a migration: SQL has no key. It runs at every start and finds nothing
    to do once every row is sealed.
    """
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


def release_leases(conn: sqlite3.Connection, now: float) -> None:
    """At start this process owns the file: claims left by a dead process are free again at once."""
    conn.execute(
        "UPDATE deliveries SET next_attempt_at = ?, lease_until = NULL"
        " WHERE lease_until IS NOT NULL AND status IN ('pending', 'failed')",
        (now,),
    )
    conn.execute(
        "UPDATE jobs SET next_submit_at = ? WHERE status = 'pending' AND next_submit_at > ?", (now, now)
    )
    conn.execute("UPDATE jobs SET refresh_at = ? WHERE refresh_at > ?", (now, now))
