-- Userpilot bulk jobs. A delivery packed into a job is 'delivering' under the job's lease
-- (`lease_owner` 'job:<id>', no `lease_until`: the job's own lease covers it) until the job
-- ends; `via` says how it went out (realtime or bulk), `realtime_only` keeps it off bulk jobs
-- (a request waiting with `Prefer: wait`, or a row a job handed back to real-time calls).
ALTER TABLE deliveries ADD COLUMN job_id TEXT;
ALTER TABLE deliveries ADD COLUMN via TEXT;
ALTER TABLE deliveries ADD COLUMN realtime_only INTEGER NOT NULL DEFAULT 0;
CREATE INDEX deliveries_job ON deliveries (job_id) WHERE job_id IS NOT NULL;
CREATE TABLE bulk_jobs (
    id TEXT PRIMARY KEY,
    parent_id TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('waiting', 'running', 'completed', 'failed', 'split', 'rejected')),
    upstream_id TEXT,
    upstream_status TEXT,
    accepted_status INTEGER,
    request_id TEXT,
    total_rows INTEGER NOT NULL,
    updates INTEGER NOT NULL,
    completed_rows INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Set while an upload of its rows may be pending at Userpilot unrecorded (no answer, or a
    -- crash before the answer was recorded): when that upload left. Its rows must not go out
    -- real-time meanwhile.
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
    outcome TEXT
);
CREATE INDEX bulk_jobs_active ON bulk_jobs (created_at) WHERE status IN ('waiting', 'running');
CREATE INDEX bulk_jobs_finished_at ON bulk_jobs (finished_at) WHERE finished_at IS NOT NULL;
