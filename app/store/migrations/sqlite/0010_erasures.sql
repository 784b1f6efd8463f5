-- Issue 22: erasures (the audit trail), their companies, suppressions and the pacing row of
-- Userpilot's delete. A company's id is kept only while its erasure runs (`company_id`, set to
-- NULL when it completes); the suppression and the finished record keep its SHA-256 digest.
CREATE TABLE erasures (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    reason TEXT NOT NULL,
    requested_by TEXT,
    companies INTEGER NOT NULL,
    erased INTEGER NOT NULL DEFAULT 0,
    purged INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    last_error TEXT,
    upstream_status INTEGER,
    upstream_request_id TEXT,
    upstream_accepted_at REAL,
    upstream_scheduled_for REAL
);
CREATE INDEX erasures_running ON erasures (next_attempt_at) WHERE status = 'running';
CREATE INDEX erasures_created ON erasures (created_at);
CREATE TABLE erasure_companies (
    erasure_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    company_id TEXT,
    purged INTEGER NOT NULL DEFAULT 0,
    sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (erasure_id, digest)
);
CREATE TABLE suppressions (
    digest TEXT PRIMARY KEY,
    erasure_id TEXT,
    since REAL NOT NULL
);
CREATE TABLE erasure_pacing (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_slot REAL NOT NULL
);
INSERT INTO erasure_pacing (id, next_slot) VALUES (1, 0);
CREATE INDEX delivered_values_company ON delivered_values (company_id);
CREATE INDEX customer_links_company ON customer_links (company_id);
-- Retention: when the relay last delivered a value of the company property.
ALTER TABLE delivered_values ADD COLUMN seen_at REAL NOT NULL DEFAULT 0;
UPDATE delivered_values SET seen_at = CAST(strftime('%s', 'now') AS REAL);
CREATE INDEX backfills_finished ON backfills (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX parked_events_created ON parked_events (created_at);
