-- the webhook inbox: verified webhooks acknowledged but not yet applied to their jobs
CREATE TABLE inbox (
    seq INTEGER PRIMARY KEY,
    event_row_id TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    created_at INTEGER,
    body TEXT NOT NULL,
    received_at REAL NOT NULL
);
