"""The SQLite backend: every SQL statement of the service lives in this package.

One writer task commits every waiting write together (group commit): BEGIN on the writer
connection's thread, the operations on the event loop (one savepoint around them all; one per
operation only if one fails, so a failing operation does not undo its neighbours), COMMIT back on
the thread. Reads run on a second connection's thread and WAL checkpoints on a third.

Durability: WAL with `synchronous=FULL`, so a commit survives power loss, not only a process crash.
Group commit makes the fsync per batch, not per request, which is what keeps FULL affordable.

Modules: `connection` (a sqlite3 connection on its own thread), `writer` (the store's core: the
group-commit writer, checkpoints, reads), `ops*` (what runs inside a writer transaction), one module
of queries per concern (`inbox`, `jobs`, `subscriptions`, `deliveries`, `archives`, `requests`, `retention`,
`console`), `rows` (rows to records) and `migrations/` (the schema, one `.sql` file per version).
"""

from __future__ import annotations

from service.store.protocol import Signals
from service.store.records import DeliveryOutcome
from service.store.sqlite.archives import ArchiveQueries
from service.store.sqlite.common import StoreClosed, owner_only
from service.store.sqlite.console import ConsoleQueries
from service.store.sqlite.deliveries import DeliveryQueries
from service.store.sqlite.inbox import InboxQueries
from service.store.sqlite.jobs import JobQueries
from service.store.sqlite.requests import RequestQueries
from service.store.sqlite.retention import RetentionQueries
from service.store.sqlite.rows import list_jobs_sql
from service.store.sqlite.subscriptions import SubscriptionQueries
from service.store.sqlite.writer import _Ops

__all__ = [
    "DeliveryOutcome",
    "Signals",
    "SqliteStore",
    "StoreClosed",
    "_Ops",
    "list_jobs_sql",
    "owner_only",
]


class SqliteStore(
    InboxQueries,
    JobQueries,
    SubscriptionQueries,
    DeliveryQueries,
    ArchiveQueries,
    RequestQueries,
    RetentionQueries,
    ConsoleQueries,
):
    """The job store on one SQLite file. Open with `await SqliteStore.open(...)`; close with `aclose()`.

    Each base holds the queries of one concern; they share the writer and connections of `StoreCore`.
    """
