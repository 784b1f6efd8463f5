-- One SQL for both stores: a batch says how its payload is stored ('lines': one JSON line per
-- update, read a chunk at a time; 'array': one JSON array, from before).
ALTER TABLE batches ADD COLUMN payload_format TEXT NOT NULL DEFAULT 'array';
