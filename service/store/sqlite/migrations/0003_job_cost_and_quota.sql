-- job cost and quota client, progress events, batch idempotency keys
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
