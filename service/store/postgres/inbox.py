"""Queries of one concern for the PostgreSQL store."""

from __future__ import annotations

from service.store.postgres.core import PgCore


class InboxQueries(PgCore):
    """Queries of one concern."""
