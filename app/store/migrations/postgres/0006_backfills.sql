-- Backfills from HubSpot and Stripe (issue 14): one row each, its committed cursor and counts.
-- At most one runs per source (the partial unique index), across every replica; the replica
-- driving it holds `owner` until `lease_until`, renewed with every page, and any replica
-- resumes one whose lease ran out from its committed cursor.
CREATE TABLE backfills (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('full', 'reconcile')),
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    cursor TEXT,
    pages INTEGER NOT NULL DEFAULT 0,
    companies INTEGER NOT NULL DEFAULT 0,
    enqueued INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    unchanged INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    total BIGINT,
    last_error TEXT,
    owner TEXT,
    lease_until DOUBLE PRECISION,
    started_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX backfills_one_running ON backfills (source) WHERE status = 'running';
CREATE INDEX backfills_started ON backfills (source, started_at);
-- Stripe: the customers whose subscription a backfill already took (the newest live one wins).
CREATE TABLE backfill_customers (
    backfill_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    live SMALLINT NOT NULL,
    PRIMARY KEY (backfill_id, customer_id)
);
-- What the relay last delivered per company property: a 64-bit digest of the value, so that
-- a reconciliation sends only what differs.
CREATE TABLE delivered_values (
    company_id TEXT NOT NULL,
    key TEXT NOT NULL,
    digest BIGINT NOT NULL,
    PRIMARY KEY (company_id, key)
);
