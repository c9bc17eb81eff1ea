-- new jobs counted by the statement that inserts them, not a trigger per row
DROP TRIGGER job_counts_insert;
