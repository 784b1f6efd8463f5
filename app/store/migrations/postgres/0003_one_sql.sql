-- One SQL for both stores: a batch says how its payload is stored ('lines': one JSON line per
-- update, read a chunk at a time; 'array': one JSON array, from before).
ALTER TABLE batches ADD COLUMN payload_format TEXT NOT NULL DEFAULT 'array';

-- New work wakes every replica's dispatcher at once (LISTEN userpilot_relay_work), not at its
-- next poll: stored updates and batches, replayed dead letters, claims handed back. One
-- notification per transaction (PostgreSQL folds identical ones), sent at commit.
CREATE FUNCTION userpilot_relay_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('userpilot_relay_work', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_inserted_notify AFTER INSERT ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION userpilot_relay_notify_work();
CREATE TRIGGER batches_inserted_notify AFTER INSERT ON batches
    FOR EACH STATEMENT EXECUTE FUNCTION userpilot_relay_notify_work();
CREATE TRIGGER deliveries_requeued_notify AFTER UPDATE OF status ON deliveries
    FOR EACH ROW
    WHEN (NEW.status = 'queued' AND (OLD.status = 'dead' OR NEW.attempts < OLD.attempts))
    EXECUTE FUNCTION userpilot_relay_notify_work();
