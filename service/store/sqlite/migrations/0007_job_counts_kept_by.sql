-- job counts kept by triggers, so /metrics does not count every job on each scrape
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
