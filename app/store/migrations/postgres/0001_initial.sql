-- The same tables as SQLite, plus the pacing row every replica shares. Times are unix
-- seconds (double precision) from the database clock, so replicas with skewed clocks agree on
-- leases, backoffs and send slots. Sequence numbers come in blocks of 65,536: a single update
-- uses one block, a bulk request one block for all its updates (`seq_from + i`), so a batch
-- reserves its places in the arrival order with one `nextval`, whatever other replicas insert.
CREATE TABLE deliveries (
    seq BIGINT GENERATED ALWAYS AS IDENTITY (INCREMENT BY 65536) PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    company_id TEXT NOT NULL,
    metadata BYTEA NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('queued', 'delivering', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL,
    caller TEXT,
    batch_id TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    enqueued_at DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    delivered_at DOUBLE PRECISION,
    last_status INTEGER,
    last_error TEXT,
    last_request_id TEXT
);
CREATE INDEX deliveries_status_seq ON deliveries (status, seq);
CREATE INDEX deliveries_company_status_seq ON deliveries (company_id, status, seq);
-- What makes a company busy: a live delivery, or updates waiting out a backoff.
CREATE INDEX deliveries_busy ON deliveries (company_id)
    WHERE status = 'delivering' OR (status = 'queued' AND attempts > 0);
CREATE INDEX deliveries_ready ON deliveries (next_attempt_at) WHERE status = 'queued';
CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE status = 'delivering';
CREATE INDEX deliveries_delivered_at ON deliveries (delivered_at)
    WHERE status = 'delivered';
-- A bulk request: one payload, expanded into deliveries as the dispatcher drains.
CREATE TABLE batches (
    id TEXT PRIMARY KEY,
    caller TEXT,
    source TEXT NOT NULL,
    total INTEGER NOT NULL,
    seq_from BIGINT NOT NULL,
    expanded INTEGER NOT NULL DEFAULT 0,
    payload BYTEA,
    created_at DOUBLE PRECISION NOT NULL
);
-- Stored out of line but not compressed: compressing a 10,000-company body costs the
-- server more CPU than the bytes it saves.
ALTER TABLE batches ALTER COLUMN payload SET STORAGE EXTERNAL;
CREATE INDEX batches_pending ON batches (seq_from) WHERE expanded < total;
CREATE INDEX batches_created_at ON batches (created_at);
CREATE TABLE idempotency_keys (
    caller TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
CREATE TABLE property_versions (
    company_id TEXT NOT NULL,
    key TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (company_id, key)
);
CREATE TABLE source_property_times (
    company_id TEXT NOT NULL,
    key TEXT NOT NULL,
    event_time DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (company_id, key)
);
CREATE TABLE webhook_events (
    source TEXT NOT NULL,
    event_key TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (source, event_key)
);
CREATE INDEX webhook_events_received_at ON webhook_events (received_at);
CREATE TABLE customer_links (
    customer_id TEXT PRIMARY KEY,
    company_id TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE parked_events (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BYTEA NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE TABLE pacing (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    next_slot DOUBLE PRECISION NOT NULL DEFAULT 0,
    paused_until DOUBLE PRECISION NOT NULL DEFAULT 0
);
INSERT INTO pacing (id) VALUES (1);
