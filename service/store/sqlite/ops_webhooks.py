"""Recording a run of verified webhooks in one set-based pass, inside the writer's transaction."""

from __future__ import annotations

import json
import sqlite3

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
    _DUPLICATE,
    _json_string,
    _Rows,
)
from service.store.sqlite.ops import OpsCore


class WebhookOps(OpsCore):
    """The webhook path of the writer's operations."""

    # -- webhooks ---------------------------------------------------------------------------------

    def record_webhooks(self, conn: sqlite3.Connection, hooks: list[IncomingWebhook]) -> list[WebhookOutcome]:
        """Store verified webhooks in arrival order: dedupe, event rows, job changes and outbox rows.

        Set-based, because the writer hands over every webhook waiting in a batch at once: one dedupe
        lookup, one job lookup, and the rows gathered into one executemany per table (a statement per
        row cost more Python than SQL). A webhook about a job we already have goes through
        the state machine on the row as stored, after the rows gathered so far are written: the job may
        be one this run made, or one an earlier webhook of the run moved.
        """
        now = self.clock.now()
        seen = {
            row[0]
            for row in conn.execute(
                "SELECT webhook_id FROM received_webhooks WHERE webhook_id IN (SELECT value FROM json_each(?))",
                (json.dumps([hook.webhook_id for hook in hooks]),),
            )
        }
        wanted = list({hook.resource_id for hook in hooks if hook.webhook_id not in seen})
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
        outcomes: list[WebhookOutcome] = []
        for hook in hooks:
            if hook.webhook_id in seen:  # before, or earlier in this run
                outcomes.append(_DUPLICATE)
                continue
            seen.add(hook.webhook_id)
            our = ids.event_id()  # made in turn, so a job's timeline reads in arrival order
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
                    now,
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
            outcomes.append(WebhookOutcome("accepted", job_id))
        rows.write(conn)
        return outcomes
