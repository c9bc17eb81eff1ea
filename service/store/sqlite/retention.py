"""Retention: deleting old history in small batches."""

from __future__ import annotations

import json
import sqlite3

from service.store.sqlite.writer import StoreCore


class RetentionQueries(StoreCore):
    """Retention: deleting old history in small batches."""

    # -- retention --------------------------------------------------------------------------------

    # Each a range seek on an index ; tests/test_retention.py holds the query plans to that.
    PRUNE_DELIVERIES_SQL = (
        "SELECT id FROM deliveries INDEXED BY deliveries_finished"
        " WHERE status IN ('succeeded', 'dead') AND updated_at < ? LIMIT ?"
    )
    PRUNE_RECEIVED_SQL = (
        "SELECT id, webhook_id FROM events INDEXED BY events_received"
        " WHERE direction = 'received' AND created_at < ? LIMIT ?"
    )
    PRUNE_EMITTED_SQL = (
        "SELECT e.id FROM events e INDEXED BY events_emitted WHERE e.direction = 'emitted' AND e.created_at < ?"
        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id) LIMIT ?"
    )

    async def prune(self, older_than: float, batch: int = 500) -> int:
        """Delete one small batch of old history; jobs are kept. Returns how many rows went.

        Old received events with their dedupe rows, emitted events whose deliveries are all gone, and
        finished deliveries with their attempts all go once older than `older_than`. An event that still
        has a delivery pending or failing is kept whatever its age, so nothing waiting to be sent is lost.
        """

        def op(c: sqlite3.Connection) -> int:
            removed = 0
            old_deliveries = [r[0] for r in c.execute(self.PRUNE_DELIVERIES_SQL, (older_than, batch))]
            if old_deliveries:
                ids = json.dumps(old_deliveries)
                removed += c.execute(
                    "DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT value FROM json_each(?))",
                    (ids,),
                ).rowcount
                removed += c.execute(
                    "DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?))", (ids,)
                ).rowcount
            received = c.execute(self.PRUNE_RECEIVED_SQL, (older_than, batch)).fetchall()
            if received:
                removed += c.execute(
                    "DELETE FROM received_webhooks WHERE webhook_id IN (SELECT value FROM json_each(?))",
                    (json.dumps([r[1] for r in received if r[1] is not None]),),
                ).rowcount
            emitted = [r[0] for r in c.execute(self.PRUNE_EMITTED_SQL, (older_than, batch))]
            old_events = [r[0] for r in received] + emitted
            if old_events:
                removed += c.execute(
                    "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(old_events),),
                ).rowcount
            return removed

        return await self._write(op)
