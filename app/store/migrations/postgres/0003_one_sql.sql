-- One SQL for both stores: a batch says how its payload is stored ('chunks': a JSON array per
-- chunk of updates, one per line, read a chunk at a time; 'array': one JSON array, from before).
ALTER TABLE batches ADD COLUMN payload_format TEXT NOT NULL DEFAULT 'array';
