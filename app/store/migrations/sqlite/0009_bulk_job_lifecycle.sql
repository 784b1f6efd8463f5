-- Issue 20: an operator may abandon a bulk job (`abandoned`, by whom and when). SQLite cannot
-- change a CHECK constraint: the table is rebuilt with the same columns plus the new ones.
CREATE TABLE bulk_jobs_new (
    id TEXT PRIMARY KEY,
    parent_id TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('waiting', 'running', 'completed', 'failed', 'split', 'rejected',
            'abandoned')),
    upstream_id TEXT,
    upstream_status TEXT,
    accepted_status INTEGER,
    request_id TEXT,
    total_rows INTEGER NOT NULL,
    updates INTEGER NOT NULL,
    completed_rows INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    uncertain_at REAL,
    owner TEXT,
    lease_until REAL,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    submitted_at REAL,
    progress_at REAL,
    finished_at REAL,
    last_error TEXT,
    outcome TEXT,
    abandoned_by TEXT,
    abandoned_at REAL
);
INSERT INTO bulk_jobs_new (id, parent_id, status, upstream_id, upstream_status, accepted_status,
    request_id, total_rows, updates, completed_rows, attempts, uncertain_at, owner, lease_until,
    next_attempt_at, created_at, updated_at, submitted_at, progress_at, finished_at, last_error,
    outcome)
SELECT id, parent_id, status, upstream_id, upstream_status, accepted_status, request_id,
    total_rows, updates, completed_rows, attempts, uncertain_at, owner, lease_until,
    next_attempt_at, created_at, updated_at, submitted_at, progress_at, finished_at, last_error,
    outcome
FROM bulk_jobs;
DROP TABLE bulk_jobs;
ALTER TABLE bulk_jobs_new RENAME TO bulk_jobs;
CREATE INDEX bulk_jobs_active ON bulk_jobs (created_at) WHERE status IN ('waiting', 'running');
CREATE INDEX bulk_jobs_finished_at ON bulk_jobs (finished_at) WHERE finished_at IS NOT NULL;
