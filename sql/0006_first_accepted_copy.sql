-- The first accepted copy is the one stored (SPEC §2): the copy with the earliest stream
-- position, whatever order consumers commit in. A settling transaction that finds its key stored
-- under a later position moves the stored row to its own copy (insert_unique's ON CONFLICT DO
-- UPDATE); the copy it displaces becomes a duplicate, and this trigger writes its ledger row in
-- the same transaction, so that a redelivery of it counts nothing. It fires only when a stored
-- row moves, never on the insert path.
CREATE FUNCTION events_copy_displaced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO duplicate_entries (stream, stream_ms, stream_seq, topic, event_id)
    VALUES (OLD.stream, OLD.stream_ms, OLD.stream_seq, OLD.topic, OLD.event_id)
    ON CONFLICT ON CONSTRAINT duplicate_entries_pkey DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER events_copy_displaced
AFTER UPDATE OF stream_ms, stream_seq ON events
FOR EACH ROW
WHEN ((OLD.stream_ms, OLD.stream_seq) IS DISTINCT FROM (NEW.stream_ms, NEW.stream_seq))
EXECUTE FUNCTION events_copy_displaced();
