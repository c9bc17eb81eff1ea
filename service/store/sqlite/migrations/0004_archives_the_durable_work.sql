-- archives, the durable work of copying finished videos' assets to storage
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
