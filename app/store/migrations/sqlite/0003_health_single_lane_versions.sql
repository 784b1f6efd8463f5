-- Readiness writes here; single updates get a lane of their own (fair scheduling);
-- property versions carry their time so they can be pruned.
CREATE TABLE store_health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_at REAL NOT NULL);
CREATE INDEX deliveries_single_queued ON deliveries (seq)
    WHERE status = 'queued' AND batch_id IS NULL;
ALTER TABLE property_versions ADD COLUMN updated_at REAL NOT NULL DEFAULT 0;
