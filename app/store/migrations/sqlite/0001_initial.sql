CREATE TABLE deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    company_id TEXT NOT NULL,
    metadata BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL,
    caller TEXT,
    batch_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    enqueued_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    delivered_at REAL,
    last_status INTEGER,
    last_error TEXT,
    last_request_id TEXT
);
CREATE INDEX deliveries_status_seq ON deliveries (status, seq);
CREATE INDEX deliveries_company_status ON deliveries (company_id, status);
CREATE INDEX deliveries_batch ON deliveries (batch_id) WHERE batch_id IS NOT NULL;
CREATE TABLE batches (
    id TEXT PRIMARY KEY,
    caller TEXT,
    total INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE idempotency_keys (
    caller TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE TABLE property_versions (
    company_id TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (company_id, key)
) WITHOUT ROWID;
CREATE TABLE source_property_times (
    company_id TEXT NOT NULL,
    key TEXT NOT NULL,
    event_time REAL NOT NULL,
    PRIMARY KEY (company_id, key)
) WITHOUT ROWID;
CREATE TABLE webhook_events (
    source TEXT NOT NULL,
    event_key TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (source, event_key)
) WITHOUT ROWID;
CREATE TABLE customer_links (
    customer_id TEXT PRIMARY KEY,
    company_id TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE parked_events (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, key)
);
