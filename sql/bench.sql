-- The PostgreSQL ceiling of `logagg bench`: the raw set-based dedup insert, with nothing of
-- logagg around it. Parsed by shared/sql.py; run by services/bench/ceilings.py only.

-- name: create_tables
DROP TABLE IF EXISTS ceiling_events, ceiling_keys;
CREATE TABLE ceiling_keys (
    topic text NOT NULL, event_id text NOT NULL, PRIMARY KEY (topic, event_id));
CREATE TABLE ceiling_events (
    topic text NOT NULL, event_id text NOT NULL, "timestamp" timestamptz NOT NULL,
    source text NOT NULL, payload jsonb NOT NULL);

-- name: insert_batch
-- One statement per batch: the keys not seen yet win the dedup gate, and only their events
-- are inserted. Parameters are sent in binary (%b).
WITH batch AS (
    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
                  AS b(topic, event_id, ts, source, payload)
), fresh AS (
    INSERT INTO ceiling_keys (topic, event_id)
    SELECT DISTINCT topic, event_id FROM batch ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING topic, event_id
)
INSERT INTO ceiling_events (topic, event_id, "timestamp", source, payload)
SELECT DISTINCT ON (b.topic, b.event_id) b.topic, b.event_id, b.ts::timestamptz, b.source,
       b.payload::jsonb
FROM batch b JOIN fresh f USING (topic, event_id)
ORDER BY b.topic, b.event_id;
