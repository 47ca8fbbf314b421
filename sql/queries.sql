-- Named queries, parsed once by shared/sql.py. Only shared/store.py runs them.
-- Parameters are psycopg placeholders; arrays are unnested so that a whole batch is one statement.
-- The statements that settle a batch take their arrays in binary (%(name)b): psycopg then sends
-- them as they are, instead of quoting every string of every event into array syntax.

-- name: share_floor
-- First in every settling transaction. The lock is shared with other settling transactions and
-- exclusive with raise_floor, so the floor that the statements after this one read (each with
-- a snapshot taken once the lock is held) cannot move before this transaction commits.
SELECT pg_advisory_xact_lock_shared(%(lock)s);

-- name: floor_lock_timeout
-- Bounds the wait for lock_floor (see Store.raise_floor), for this transaction only.
SELECT set_config('lock_timeout', %(lock_timeout)s, true);

-- name: lock_floor
SELECT pg_advisory_xact_lock(%(lock)s);

-- name: raise_floor
UPDATE settled_floor SET stream_ms = %(ms)s, stream_seq = %(seq)s
WHERE (stream_ms, stream_seq) < (%(ms)s, %(seq)s);

-- name: prune_ledger
DELETE FROM duplicate_entries WHERE (stream_ms, stream_seq) < (%(ms)s, %(seq)s);

-- name: insert_unique
-- Store the first copy of every key of the batch that is not stored yet. Rows go in sorted by
-- key, so that two consumers inserting overlapping keys lock them in the same order and cannot
-- deadlock. A key that another transaction is inserting waits for it, then is skipped.
INSERT INTO events (topic, event_id, "timestamp", source, payload, stream_ms, stream_seq)
SELECT DISTINCT ON (b.topic, b.event_id)
       b.topic, b.event_id, b.ts::timestamptz, b.source, b.payload::jsonb, b.stream_ms, b.stream_seq
FROM unnest(%(topics)b::text[], %(event_ids)b::text[], %(timestamps)b::text[],
            %(sources)b::text[], %(payloads)b::text[], %(stream_ms)b::bigint[],
            %(stream_seq)b::bigint[])
     AS b(topic, event_id, ts, source, payload, stream_ms, stream_seq)
-- Below the settled floor everything was settled and acked: an entry from there (a consumer
-- that stalled past its claim) changes nothing.
WHERE (b.stream_ms, b.stream_seq) >= (SELECT stream_ms, stream_seq FROM settled_floor)
ORDER BY b.topic, b.event_id, b.stream_ms, b.stream_seq
ON CONFLICT ON CONSTRAINT events_dedup_key DO NOTHING
RETURNING topic, stream_ms, stream_seq;

-- name: count_batch
-- Runs after insert_unique, in the same transaction but with a fresh snapshot, so it sees every
-- copy stored by then, ours and those committed by other consumers meanwhile.
-- An entry whose key is stored under another stream position is a duplicate, counted once:
-- a redelivered duplicate entry finds its ledger row and adds nothing. An entry whose key is
-- stored under its own position is the stored copy (just inserted, or a redelivery of it).
-- The counters move in the same transaction as the rows they count. Returns the positions
-- counted as duplicates.
WITH batch AS (
    SELECT *
    FROM unnest(%(topics)b::text[], %(event_ids)b::text[], %(stream_ms)b::bigint[],
                %(stream_seq)b::bigint[]) AS b(topic, event_id, stream_ms, stream_seq)
), duplicates AS (
    INSERT INTO duplicate_entries (stream_ms, stream_seq, topic, event_id)
    SELECT b.stream_ms, b.stream_seq, b.topic, b.event_id
    FROM batch b
    JOIN events e ON e.topic = b.topic AND e.event_id = b.event_id
    WHERE (e.stream_ms, e.stream_seq) <> (b.stream_ms, b.stream_seq)
      AND (b.stream_ms, b.stream_seq) >= (SELECT stream_ms, stream_seq FROM settled_floor)
    ORDER BY b.stream_ms, b.stream_seq
    ON CONFLICT ON CONSTRAINT duplicate_entries_pkey DO NOTHING
    RETURNING topic, stream_ms, stream_seq
), deltas AS (
    SELECT topic, sum(u)::bigint AS unique_processed, sum(d)::bigint AS duplicate_dropped,
           sum(r)::bigint AS revived
    FROM (
        SELECT topic, 1 AS u, 0 AS d, 0 AS r FROM unnest(%(unique_topics)b::text[]) AS u(topic)
        UNION ALL
        SELECT topic, 0, 1, 0 FROM duplicates
        UNION ALL
        -- Replayed dead letters settle here, so they leave the dead-letter count.
        SELECT topic, 0, 0, 1 FROM unnest(%(revived_topics)b::text[]) AS r(topic)
    ) AS settled
    GROUP BY topic
), counted AS (
    INSERT INTO topic_stats AS s (topic, shard, unique_processed, duplicate_dropped,
                                  dead_lettered)
    SELECT topic, %(shard)b::smallint, unique_processed, duplicate_dropped, -revived
    FROM deltas ORDER BY topic
    ON CONFLICT ON CONSTRAINT topic_stats_pkey DO UPDATE
    SET unique_processed = s.unique_processed + excluded.unique_processed,
        duplicate_dropped = s.duplicate_dropped + excluded.duplicate_dropped,
        dead_lettered = s.dead_lettered + excluded.dead_lettered
)
SELECT stream_ms, stream_seq FROM duplicates;

-- name: revive_dead_letters
-- Entries that replay a dead letter take it back from the dead, once: a second replay of the
-- same letter, or a redelivery of a replay already settled, finds it revived and does nothing.
-- A concurrent replay of the same letter waits on its row lock, then finds it revived too.
UPDATE dead_letters AS d
SET status = 'replayed', replayed_at = now()
FROM unnest(%(replay_ms)s::bigint[], %(replay_seq)s::bigint[]) AS r(stream_ms, stream_seq)
WHERE d.stream_ms = r.stream_ms AND d.stream_seq = r.stream_seq AND d.status = 'dead'
RETURNING d.stream_ms, d.stream_seq;

-- name: dead_letter
-- Give up on entries: write their letters and count them, once. An entry whose letter exists
-- already (a redelivery of this very step) or that was settled after all (stored, or counted as
-- a duplicate, before its stream entry vanished) adds nothing. An entry that replays a letter
-- writes no new one: its letter stays dead, with the latest error. An undecodable entry was
-- not written by ingest, so it was never received: its letter is kept but not counted.
WITH letters AS (
    SELECT *
    FROM unnest(%(stream_ms)s::bigint[], %(stream_seq)s::bigint[], %(topics)s::text[],
                %(event_ids)s::text[], %(events)s::bytea[], %(reasons)s::text[],
                %(errors)s::text[], %(deliveries)s::integer[], %(replay_ms)s::bigint[],
                %(replay_seq)s::bigint[])
         AS l(stream_ms, stream_seq, topic, event_id, event, reason, last_error, deliveries,
              replay_ms, replay_seq)
), fresh AS (
    INSERT INTO dead_letters (stream_ms, stream_seq, topic, event_id, event, reason,
                              last_error, deliveries)
    SELECT l.stream_ms, l.stream_seq, l.topic, l.event_id, l.event, l.reason, l.last_error,
           l.deliveries
    FROM letters l
    WHERE l.replay_ms IS NULL
      AND NOT EXISTS (SELECT 1 FROM events e
                      WHERE e.stream_ms = l.stream_ms AND e.stream_seq = l.stream_seq)
      AND NOT EXISTS (SELECT 1 FROM duplicate_entries d
                      WHERE d.stream_ms = l.stream_ms AND d.stream_seq = l.stream_seq)
    ORDER BY l.stream_ms, l.stream_seq
    ON CONFLICT ON CONSTRAINT dead_letters_pkey DO NOTHING
    RETURNING coalesce(topic, '') AS topic, reason <> 'undecodable' AS counted
), still_dead AS (
    UPDATE dead_letters AS d
    SET last_error = l.last_error
    FROM letters l
    WHERE d.stream_ms = l.replay_ms AND d.stream_seq = l.replay_seq AND d.status = 'dead'
), counted AS (
    INSERT INTO topic_stats AS s (topic, shard, dead_lettered)
    SELECT topic, %(shard)s::smallint, count(*) FROM fresh WHERE counted
    GROUP BY topic ORDER BY topic
    ON CONFLICT ON CONSTRAINT topic_stats_pkey DO UPDATE
    SET dead_lettered = s.dead_lettered + excluded.dead_lettered
)
SELECT count(*) FILTER (WHERE counted) FROM fresh;

-- name: dead_letters
SELECT stream_ms, stream_seq, topic, event_id, event, reason, last_error, deliveries, status,
       dead_lettered_at, replayed_at
FROM dead_letters
WHERE (stream_ms, stream_seq) > (%(after_ms)s, %(after_seq)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
ORDER BY stream_ms, stream_seq
LIMIT %(limit)s;

-- name: dead_letters_by_position
SELECT stream_ms, stream_seq, topic, event_id, event, reason, last_error, deliveries, status,
       dead_lettered_at, replayed_at
FROM dead_letters AS d
JOIN unnest(%(stream_ms)s::bigint[], %(stream_seq)s::bigint[]) AS p(ms, seq)
  ON d.stream_ms = p.ms AND d.stream_seq = p.seq
ORDER BY stream_ms, stream_seq;

-- name: topic_stats
SELECT topic, sum(unique_processed)::bigint, sum(duplicate_dropped)::bigint,
       sum(dead_lettered)::bigint
FROM topic_stats
GROUP BY topic
ORDER BY topic;

-- name: events_page
SELECT topic, event_id, "timestamp", source, payload::text AS payload, stream_ms, stream_seq
FROM events
WHERE (stream_ms, stream_seq) > (%(after_ms)s, %(after_seq)s)
ORDER BY stream_ms, stream_seq
LIMIT %(limit)s;

-- name: events_page_of_topic
SELECT topic, event_id, "timestamp", source, payload::text AS payload, stream_ms, stream_seq
FROM events
WHERE topic = %(topic)s AND (stream_ms, stream_seq) > (%(after_ms)s, %(after_seq)s)
ORDER BY stream_ms, stream_seq
LIMIT %(limit)s;
