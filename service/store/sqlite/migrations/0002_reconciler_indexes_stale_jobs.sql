-- reconciler indexes: stale jobs by backoff then age, completed videos by expiry
DROP INDEX jobs_stale;
CREATE INDEX jobs_stale ON jobs(reconcile_at, updated_at)
    WHERE status IN ('queued', 'in_progress') AND resource_id IS NOT NULL;
CREATE INDEX jobs_expiry ON jobs(json_extract(result, '$.expires_at'))
    WHERE kind = 'video' AND status = 'completed' AND expired_notified = 0;
