-- Bulk requests are stored as one payload with a reserved range of sequence numbers
-- and expanded into deliveries as the dispatcher drains the queue.
ALTER TABLE batches ADD COLUMN seq_from INTEGER;
ALTER TABLE batches ADD COLUMN expanded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN source TEXT NOT NULL DEFAULT 'bulk';
ALTER TABLE batches ADD COLUMN payload BLOB;
CREATE INDEX batches_pending ON batches (seq_from) WHERE expanded < total;
DROP INDEX deliveries_batch;
CREATE INDEX deliveries_ready ON deliveries (next_attempt_at) WHERE status = 'queued';
