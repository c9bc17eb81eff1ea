"""Versioned schema migrations for the SQLite store; each runs once, in order, in its own transaction.

The schema lives beside this module as `NNNN_name.sql` files: the number is the version recorded in
`schema_migrations`, the first line (`-- ...`) its description. Versions are never renumbered or
edited once released; a change of schema is a new file.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from importlib import resources


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


def apply_migrations(conn: sqlite3.Connection, now: float) -> list[int]:
    """Apply every migration newer than the database's version; return the versions applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied: list[int] = []
    for migration in load_migrations():
        if migration.version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, now),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied


def _statements(script: str) -> list[str]:
    """The script's statements, one by one: a trigger's body holds semicolons of its own."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending)
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending)
    return statements
