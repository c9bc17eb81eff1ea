-- quota index without webhook jobs
DROP INDEX jobs_client_created;
CREATE INDEX jobs_client_created ON jobs(client, created_at) WHERE origin != 'webhook';
