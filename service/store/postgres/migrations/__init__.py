"""Versioned schema migrations for the PostgreSQL store, applied once however many replicas start together.

The schema lives beside this module as `NNNN_name.sql` files, as for SQLite: the number is the version
recorded in `schema_migrations`, the first line (`-- ...`) its description. All pending migrations run
in one transaction that first takes a transaction-level advisory lock, so replicas starting at once
queue on the lock, and each after the first finds nothing left to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import asyncpg

MIGRATION_LOCK = "migrate"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files(__package__).iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        text = entry.read_text(encoding="utf-8")
        first, _, sql = text.partition("\n")
        found.append(Migration(int(name.split("_", 1)[0]), first.removeprefix("--").strip(), sql))
    return sorted(found, key=lambda m: m.version)


async def apply_migrations(conn: asyncpg.Connection, now: float, lock: int) -> list[int]:
    """Apply every migration newer than the database's version; return the versions applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in load_migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)  # a script of several statements: the simple query protocol
            await conn.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.description,
                now,
            )
            applied.append(migration.version)
    return applied
