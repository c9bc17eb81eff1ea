"""The webhook inbox: the receiver's one write, and the processor's batches that apply it."""

from __future__ import annotations

import sqlite3

from service.store.records import IncomingWebhook, WebhookOutcome
from service.store.sqlite.ops_webhooks import _WebhookOp
from service.store.sqlite.writer import StoreCore


class InboxQueries(StoreCore):
    """The webhook inbox: the receiver's one write, and the processor's batches that apply it."""

    async def enqueue_webhook(self, hook: IncomingWebhook) -> WebhookOutcome:
        """Acknowledge a verified webhook: its dedupe key and inbox row, committed; nothing else."""
        return await self._write(_WebhookOp(self._ops, hook, apply=False))

    async def record_webhook(self, hook: IncomingWebhook) -> WebhookOutcome:
        """Acknowledge and apply a webhook in one transaction: event row, job change and outbox rows."""
        return await self._write(_WebhookOp(self._ops, hook, apply=True))

    async def process_inbox(self, limit: int) -> list[float]:
        """Apply up to `limit` of the oldest inbox rows, in received order; their received times."""
        return await self._write(lambda c: self._ops.process_inbox(c, limit))

    async def inbox_depth(self) -> int:
        """Webhooks acknowledged but not yet applied."""
        return await self._read(lambda c: int(c.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]))

    async def count_received(self) -> int:
        return await self._read(_count_received)


def _count_received(c: sqlite3.Connection) -> int:
    return int(c.execute("SELECT COUNT(*) FROM received_webhooks").fetchone()[0])
