-- Named queries, parsed once by shared/sql.py. Only shared/store.py runs them.
-- Parameters are psycopg placeholders; arrays are unnested so that a whole batch is one statement.

-- name: insert_unique
-- Store the first copy of every key of the batch that is not stored yet. Rows go in sorted by
-- key, so that two consumers inserting overlapping keys lock them in the same order and cannot
-- deadlock. A key that another transaction is inserting waits for it, then is skipped.
INSERT INTO events (topic, event_id, "timestamp", source, payload, stream_ms, stream_seq)
SELECT DISTINCT ON (b.topic, b.event_id)
       b.topic, b.event_id, b.ts::timestamptz, b.source, b.payload::jsonb, b.stream_ms, b.stream_seq
FROM unnest(%(topics)s::text[], %(event_ids)s::text[], %(timestamps)s::text[],
            %(sources)s::text[], %(payloads)s::text[], %(stream_ms)s::bigint[],
            %(stream_seq)s::bigint[])
     AS b(topic, event_id, ts, source, payload, stream_ms, stream_seq)
ORDER BY b.topic, b.event_id, b.stream_ms, b.stream_seq
ON CONFLICT ON CONSTRAINT events_dedup_key DO NOTHING
RETURNING topic, stream_ms, stream_seq;

-- name: count_batch
-- Runs after insert_unique, in the same transaction but with a fresh snapshot, so it sees every
-- copy stored by then, ours and those committed by other consumers meanwhile.
-- An entry whose key is stored under another stream position is a duplicate, counted once:
-- a redelivered duplicate entry finds its ledger row and adds nothing. An entry whose key is
-- stored under its own position is the stored copy (just inserted, or a redelivery of it).
-- The counters move in the same transaction as the rows they count.
WITH batch AS (
    SELECT *
    FROM unnest(%(topics)s::text[], %(event_ids)s::text[], %(stream_ms)s::bigint[],
                %(stream_seq)s::bigint[]) AS b(topic, event_id, stream_ms, stream_seq)
), duplicates AS (
    INSERT INTO duplicate_entries (stream_ms, stream_seq, topic, event_id)
    SELECT b.stream_ms, b.stream_seq, b.topic, b.event_id
    FROM batch b
    JOIN events e ON e.topic = b.topic AND e.event_id = b.event_id
    WHERE (e.stream_ms, e.stream_seq) <> (b.stream_ms, b.stream_seq)
    ORDER BY b.stream_ms, b.stream_seq
    ON CONFLICT ON CONSTRAINT duplicate_entries_pkey DO NOTHING
    RETURNING topic
), deltas AS (
    SELECT topic, sum(is_unique)::bigint AS unique_processed,
           sum(1 - is_unique)::bigint AS duplicate_dropped
    FROM (
        SELECT topic, 1 AS is_unique FROM unnest(%(unique_topics)s::text[]) AS u(topic)
        UNION ALL
        SELECT topic, 0 FROM duplicates
    ) AS settled
    GROUP BY topic
), counted AS (
    INSERT INTO topic_stats AS s (topic, unique_processed, duplicate_dropped)
    SELECT topic, unique_processed, duplicate_dropped FROM deltas ORDER BY topic
    ON CONFLICT ON CONSTRAINT topic_stats_pkey DO UPDATE
    SET unique_processed = s.unique_processed + excluded.unique_processed,
        duplicate_dropped = s.duplicate_dropped + excluded.duplicate_dropped
)
SELECT topic, unique_processed, duplicate_dropped FROM deltas;

-- name: topic_stats
SELECT topic, unique_processed, duplicate_dropped, dead_lettered
FROM topic_stats
ORDER BY topic;

-- name: events_page
SELECT topic, event_id, "timestamp", source, payload, stream_ms, stream_seq
FROM events
WHERE (stream_ms, stream_seq) > (%(after_ms)s, %(after_seq)s)
ORDER BY stream_ms, stream_seq
LIMIT %(limit)s;

-- name: events_page_of_topic
SELECT topic, event_id, "timestamp", source, payload, stream_ms, stream_seq
FROM events
WHERE topic = %(topic)s AND (stream_ms, stream_seq) > (%(after_ms)s, %(after_seq)s)
ORDER BY stream_ms, stream_seq
LIMIT %(limit)s;
