-- idempotency fingerprints; job metadata by key and value for GET /v1/jobs?metadata.<key>=<value>
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
