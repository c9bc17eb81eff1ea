-- jobs, events, dedupe, subscriptions, deliveries
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
