"""Versioned schema migrations for the SQLite store; each runs once, in order, in its own transaction."""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "jobs, events, dedupe, subscriptions, deliveries",
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            resource_id TEXT,
            status TEXT NOT NULL,
            progress INTEGER NOT NULL DEFAULT 0,
            origin TEXT NOT NULL,
            request TEXT,
            result TEXT,
            error TEXT,
            callback_url TEXT,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            completed_at INTEGER,
            sequence INTEGER NOT NULL DEFAULT 0,
            idempotency_key TEXT,
            submit_attempts INTEGER NOT NULL DEFAULT 0,
            next_submit_at REAL,
            refresh_at REAL,
            refresh_attempts INTEGER NOT NULL DEFAULT 0,
            reconcile_at REAL,
            reconcile_misses INTEGER NOT NULL DEFAULT 0,
            expired_notified INTEGER NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX jobs_resource ON jobs(resource_id) WHERE resource_id IS NOT NULL;
        CREATE UNIQUE INDEX jobs_idempotency ON jobs(idempotency_key) WHERE idempotency_key IS NOT NULL;
        CREATE INDEX jobs_status ON jobs(status, id);
        CREATE INDEX jobs_kind ON jobs(kind, id);
        CREATE INDEX jobs_submit_due ON jobs(next_submit_at) WHERE next_submit_at IS NOT NULL;
        CREATE INDEX jobs_refresh_due ON jobs(refresh_at) WHERE refresh_at IS NOT NULL;
        CREATE INDEX jobs_stale ON jobs(updated_at)
            WHERE status IN ('queued', 'in_progress') AND resource_id IS NOT NULL;

        CREATE TABLE received_webhooks (
            webhook_id TEXT PRIMARY KEY,
            event_id TEXT NOT NULL,
            received_at REAL NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE events (
            id TEXT PRIMARY KEY,
            direction TEXT NOT NULL,
            type TEXT NOT NULL,
            job_id TEXT,
            source TEXT NOT NULL,
            created_at REAL NOT NULL,
            webhook_id TEXT,
            openai_event_id TEXT,
            body TEXT NOT NULL,
            headers TEXT
        );
        CREATE INDEX events_job ON events(job_id, id) WHERE job_id IS NOT NULL;
        CREATE INDEX events_emitted ON events(created_at) WHERE direction = 'emitted';

        CREATE TABLE subscriptions (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            event_types TEXT,
            description TEXT,
            secret TEXT NOT NULL,
            previous_secret TEXT,
            previous_secret_until REAL,
            enabled INTEGER NOT NULL DEFAULT 1,
            ordered INTEGER NOT NULL DEFAULT 0,
            disabled_reason TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            last_success_at REAL,
            failing_since REAL
        );

        CREATE TABLE deliveries (
            id TEXT PRIMARY KEY,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            subscription_id TEXT,
            job_id TEXT,
            url TEXT,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            lease_until REAL,
            ordering_key TEXT,
            sequence INTEGER,
            event_created_at REAL NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            last_status_code INTEGER,
            last_error TEXT,
            delivered_at REAL
        );
        CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE status IN ('pending', 'failed');
        CREATE INDEX deliveries_ordering ON deliveries(ordering_key, sequence)
            WHERE ordering_key IS NOT NULL AND status IN ('pending', 'failed');
        CREATE INDEX deliveries_subscription ON deliveries(subscription_id, id);
        CREATE INDEX deliveries_job ON deliveries(job_id, id);
        CREATE INDEX deliveries_status ON deliveries(status, id);

        CREATE TABLE delivery_attempts (
            id INTEGER PRIMARY KEY,
            delivery_id TEXT NOT NULL,
            attempted_at REAL NOT NULL,
            status_code INTEGER,
            latency_ms REAL NOT NULL,
            error TEXT
        );
        CREATE INDEX delivery_attempts_delivery ON delivery_attempts(delivery_id, id);
        """,
    ),
    (
        2,
        "reconciler indexes: stale jobs by backoff then age, completed videos by expiry",
        # The reconciler asks for stale jobs every pass. Keyed on (reconcile_at, updated_at), jobs waiting
        # out their per-job backoff are never visited; `INDEXED BY jobs_stale` in the store pins the plan.
        # jobs_expiry holds only completed videos not yet announced as expired, keyed on the
        # `result.expires_at` OpenAI gave, so the expiry check is a range seek over a small index.
        """
        DROP INDEX jobs_stale;
        CREATE INDEX jobs_stale ON jobs(reconcile_at, updated_at)
            WHERE status IN ('queued', 'in_progress') AND resource_id IS NOT NULL;
        CREATE INDEX jobs_expiry ON jobs(json_extract(result, '$.expires_at'))
            WHERE kind = 'video' AND status = 'completed' AND expired_notified = 0;
        """,
    ),
    (
        3,
        "issue 8: job cost and quota client, progress events, batch idempotency keys",
        # `client` is the quota key's metadata value, copied at creation so the quota checks are range
        # seeks: jobs per hour and spend per day on (client, created_at), concurrent jobs on the partial
        # jobs_client_active. `progress_emitted` is the progress of the last video.progress event.
        """
        ALTER TABLE jobs ADD COLUMN client TEXT;
        ALTER TABLE jobs ADD COLUMN estimated_cost_usd REAL;
        ALTER TABLE jobs ADD COLUMN progress_emitted INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX jobs_client_created ON jobs(client, created_at);
        CREATE INDEX jobs_client_active ON jobs(client)
            WHERE status IN ('pending', 'queued', 'in_progress');
        CREATE INDEX jobs_created ON jobs(created_at);
        CREATE TABLE batch_keys (
            idempotency_key TEXT PRIMARY KEY,
            job_ids TEXT NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        4,
        "issue 9: archives, the durable work of copying finished videos' assets to storage",
        # One row per (job, variant), written in the transaction that completes the video. The archiver
        # claims due rows through archives_due (pending rows only), leasing them by moving next_attempt_at.
        """
        CREATE TABLE archives (
            job_id TEXT NOT NULL,
            variant TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            lease_until REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            size INTEGER,
            sha256 TEXT,
            uri TEXT,
            key TEXT,
            content_type TEXT,
            stored_at REAL,
            error TEXT,
            PRIMARY KEY (job_id, variant)
        ) WITHOUT ROWID;
        CREATE INDEX archives_due ON archives(next_attempt_at) WHERE status = 'pending';
        """,
    ),
    (
        5,
        "per-subscription due index for the delivery claim",
        """
        CREATE INDEX deliveries_sub_due ON deliveries(subscription_id, next_attempt_at)
            WHERE status IN ('pending', 'failed');
        """,
    ),
    (
        6,
        "retention by index: old finished deliveries, old received events, deliveries by event",
        # Without these, each prune batch scanned the deliveries table once per old event (NOT EXISTS on
        # an unindexed event_id) and scanned events and received_webhooks whole when little was old: a
        # few thousand webhooks' history took minutes to prune, holding the single writer. Dedupe rows
        # now go with their received event (same webhook id, same age); orphans are cleared here once.
        """
        CREATE INDEX deliveries_event ON deliveries(event_id);
        CREATE INDEX deliveries_finished ON deliveries(updated_at) WHERE status IN ('succeeded', 'dead');
        CREATE INDEX events_received ON events(created_at) WHERE direction = 'received';
        DELETE FROM received_webhooks WHERE webhook_id NOT IN
            (SELECT webhook_id FROM events WHERE direction = 'received' AND webhook_id IS NOT NULL);
        """,
    ),
    (
        7,
        "job counts kept by triggers, so /metrics does not count every job on each scrape",
        # Jobs are never pruned: a GROUP BY over them took ~0.5 s per scrape at 300,000 jobs, holding the
        # reader connection every API read waits on. The triggers run in the transaction that inserts a
        # job or moves its status, so the counts are exactly as committed, crash or no crash.
        """
        CREATE TABLE job_counts (
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (kind, status)
        ) WITHOUT ROWID;
        INSERT INTO job_counts (kind, status, n) SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status;
        CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
            INSERT INTO job_counts (kind, status, n) VALUES (NEW.kind, NEW.status, 1)
                ON CONFLICT (kind, status) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER job_counts_update AFTER UPDATE OF kind, status ON jobs
            WHEN OLD.status IS NOT NEW.status OR OLD.kind IS NOT NEW.kind BEGIN
            UPDATE job_counts SET n = n - 1 WHERE kind = OLD.kind AND status = OLD.status;
            INSERT INTO job_counts (kind, status, n) VALUES (NEW.kind, NEW.status, 1)
                ON CONFLICT (kind, status) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
            UPDATE job_counts SET n = n - 1 WHERE kind = OLD.kind AND status = OLD.status;
        END;
        """,
    ),
    (
        8,
        "quota index without webhook jobs",
        # Quotas count only jobs a client made (origin other than webhook): jobs first heard of by webhook,
        # most of the jobs of a team that creates videos elsewhere, no longer write this index at all.
        """
        DROP INDEX jobs_client_created;
        CREATE INDEX jobs_client_created ON jobs(client, created_at) WHERE origin != 'webhook';
        """,
    ),
    (
        9,
        "new jobs counted by the statement that inserts them, not a trigger per row",
        # The insert trigger cost ~5 us of a webhook's ~40 us of SQL. The store's two job inserts (a job
        # made through the API, a batch of jobs first heard of by webhook) add their counts in the same
        # transaction (`_count_new_jobs`); status changes and deletes keep their triggers.
        """
        DROP TRIGGER job_counts_insert;
        """,
    ),
    (
        11,
        "delivery retries: a manual retry's fresh schedule, and what each attempt's response said",
        # `retry_base` is the attempt count when the current schedule started (0, or the count at a manual
        # retry): the next delay is schedule[attempts - retry_base], so `attempts` stays the true total
        # and always equals the attempts logged. `response_body` keeps the first 1 KiB of the answer.
        """
        ALTER TABLE deliveries ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE delivery_attempts ADD COLUMN response_body TEXT;
        """,
    ),
    (
        13,
        "idempotency fingerprints; job metadata by key and value for GET /v1/jobs?metadata.<key>=<value>",
        # A key reused with a different body is refused (422 idempotency_key_reused) rather than answered
        # with the first job. Rows from before this migration have no fingerprint and keep replaying.
        # job_metadata holds one row per metadata entry (written with the job; metadata never changes), so
        # a metadata filter is a seek on (key, value) walking job ids in order, not a scan of every job's
        # JSON. Jobs first heard of by webhook have no metadata and write no rows.
        """
        ALTER TABLE jobs ADD COLUMN request_hash TEXT;
        ALTER TABLE batch_keys ADD COLUMN request_hash TEXT;
        CREATE TABLE job_metadata (
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            job_id TEXT NOT NULL,
            PRIMARY KEY (key, value, job_id)
        ) WITHOUT ROWID;
        INSERT INTO job_metadata (key, value, job_id)
            SELECT m.key, m.value, jobs.id FROM jobs, json_each(jobs.metadata) AS m
            WHERE jobs.metadata != '{}' AND m.type = 'text';
        """,
    ),
]


def apply_migrations(conn: sqlite3.Connection, now: float) -> list[int]:
    """Apply every migration newer than the database's version; return the versions applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied: list[int] = []
    for version, description, sql in MIGRATIONS:
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                (version, description, now),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version)
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
