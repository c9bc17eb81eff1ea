"""Jobs made through the API: idempotency, quotas and usage."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from service.domain.quotas import (
    DAY,
    HOUR,
    NewJob,
    Quotas,
    concurrent_refusal,
    daily_exceeded,
    daily_refusal,
    demand,
    per_hour_exceeded,
    per_hour_refusal,
)
from service.store.records import (
    IdempotencyKeyReused,
    Job,
)
from service.store.sqlite.rows import _job
from service.store.sqlite.writer import StoreCore


class RequestQueries(StoreCore):
    """Jobs made through the API: idempotency, quotas and usage."""

    # -- cost, quotas, usage, batches ------------------------------------------------------------

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
        for client, (n, usd) in demand(jobs).items():
            if quotas.concurrent is not None:
                active = c.execute(
                    "SELECT COUNT(*) FROM jobs INDEXED BY jobs_client_active WHERE client IS ?"
                    " AND status IN ('pending', 'queued', 'in_progress') AND origin != 'webhook'",
                    (client,),
                ).fetchone()[0]
                refusal = concurrent_refusal(client, active, n, quotas.concurrent)
                if refusal is not None:
                    raise refusal
            if quotas.per_hour is not None:
                window = (client, now - HOUR)
                recent = c.execute(
                    "SELECT COUNT(*) FROM jobs INDEXED BY jobs_client_created"
                    " WHERE client IS ? AND created_at > ? AND origin != 'webhook'",
                    window,
                ).fetchone()[0]
                if per_hour_exceeded(recent, n, quotas.per_hour):
                    created = [
                        r[0]
                        for r in c.execute(
                            "SELECT created_at FROM jobs INDEXED BY jobs_client_created"
                            " WHERE client IS ? AND created_at > ?"
                            " AND origin != 'webhook' ORDER BY created_at",
                            window,
                        ).fetchall()
                    ]
                    raise per_hour_refusal(client, created, n, quotas.per_hour, now)
            if quotas.daily_usd is not None:
                # Jobs that failed or were cancelled before reaching OpenAI never cost anything.
                spending = (
                    " FROM jobs INDEXED BY jobs_client_created WHERE client IS ? AND created_at > ?"
                    " AND origin != 'webhook' AND estimated_cost_usd IS NOT NULL"
                    " AND NOT (status IN ('failed', 'cancelled') AND resource_id IS NULL)"
                )
                window = (client, now - DAY)
                spent = float(c.execute("SELECT TOTAL(estimated_cost_usd)" + spending, window).fetchone()[0])
                if daily_exceeded(spent, usd, quotas.daily_usd):
                    rows = c.execute(
                        "SELECT created_at, estimated_cost_usd" + spending + " ORDER BY created_at", window
                    ).fetchall()
                    raise daily_refusal(client, [(r[0], r[1]) for r in rows], usd, quotas.daily_usd, now)

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
