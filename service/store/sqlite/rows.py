"""Rows to records: how a row of each table becomes the record the rest of the service sees."""

from __future__ import annotations

import sqlite3

from service.store.records import Attempt, Delivery
from service.store.rows import archive_from_row as _archive
from service.store.rows import delivery_from_row as _delivery
from service.store.rows import job_from_row as _job
from service.store.rows import subscription_from_row as _subscription

__all__ = ["_archive", "_delivery", "_job", "_subscription", "_with_attempts", "list_jobs_sql"]


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
