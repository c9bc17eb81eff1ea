-- webhooks acknowledged but impossible to apply: set aside with the error, so the rest of the inbox moves on
CREATE TABLE inbox_failed (
    seq INTEGER PRIMARY KEY,
    event_row_id TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    created_at INTEGER,
    body TEXT NOT NULL,
    received_at REAL NOT NULL,
    error TEXT NOT NULL,
    failed_at REAL NOT NULL
);
