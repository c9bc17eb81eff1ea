"""Rows to records, for every backend: each store keeps the same columns, so one converter reads a row of
either (a `sqlite3.Row` or an `asyncpg.Record`; both are read by column name)."""

from __future__ import annotations

import json
from typing import Any, Protocol

from service.secretbox import SealError, SecretBox
from service.store.records import Archive, Attempt, Delivery, Job, Subscription


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


def loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def job_from_row(row: Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        resource_id=row["resource_id"],
        status=row["status"],
        progress=row["progress"],
        origin=row["origin"],
        request=loads(row["request"]),
        result=loads(row["result"]),
        error=loads(row["error"]),
        callback_url=row["callback_url"],
        metadata=json.loads(row["metadata"] or "{}"),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        sequence=row["sequence"],
        submit_attempts=row["submit_attempts"],
        estimated_cost_usd=row["estimated_cost_usd"],
    )


def subscription_from_row(row: Row, box: SecretBox | None) -> Subscription:
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
        event_types=loads(row["event_types"]),
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


def delivery_from_row(row: Row, attempts: list[Attempt] | None = None) -> Delivery:
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


def archive_from_row(row: Row) -> Archive:
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
