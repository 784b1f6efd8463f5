-- One SQL for both stores. A batch says how its payload is stored ('chunks': a JSON array per
-- chunk of updates, one per line, read a chunk at a time; 'array': one JSON array, from
-- before); the counter that reserves a batch's sequence numbers always exists; and the indexes
-- and the status rule that PostgreSQL has had from the start.
ALTER TABLE batches ADD COLUMN payload_format TEXT NOT NULL DEFAULT 'array';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'deliveries', 0
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'deliveries');
DROP INDEX deliveries_company_status;
CREATE INDEX deliveries_company_status_seq ON deliveries (company_id, status, seq);
-- What makes a company busy: a live delivery, or updates waiting out a backoff.
CREATE INDEX deliveries_busy ON deliveries (company_id)
    WHERE status = 'delivering' OR (status = 'queued' AND attempts > 0);
CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE status = 'delivering';
CREATE INDEX deliveries_delivered_at ON deliveries (delivered_at) WHERE status = 'delivered';
CREATE INDEX batches_created_at ON batches (created_at);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
CREATE INDEX webhook_events_received_at ON webhook_events (received_at);
-- SQLite cannot add a CHECK to a table that exists: triggers hold the same rule.
CREATE TRIGGER deliveries_status_on_insert BEFORE INSERT ON deliveries
    WHEN NEW.status NOT IN ('queued', 'delivering', 'delivered', 'dead')
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: deliveries.status');
END;
CREATE TRIGGER deliveries_status_on_update BEFORE UPDATE OF status ON deliveries
    WHEN NEW.status NOT IN ('queued', 'delivering', 'delivered', 'dead')
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: deliveries.status');
END;
