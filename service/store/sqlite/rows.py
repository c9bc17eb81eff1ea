"""Rows to records: how a row of each table becomes the record the rest of the service sees."""

from __future__ import annotations

import json
import sqlite3

from service.secretbox import SealError, SecretBox
from service.store.records import (
    Archive,
    Attempt,
    Delivery,
    Job,
    Subscription,
)
from service.store.sqlite.common import _loads


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
