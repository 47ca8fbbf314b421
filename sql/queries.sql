-- Named queries, parsed once by shared/sql.py. Only shared/store.py runs them.
-- Parameters are psycopg placeholders; arrays are unnested so that a whole batch is one statement.
-- The statements that settle a batch take their arrays in binary (%(name)b): psycopg then sends
-- them as they are, instead of quoting every string of every event into array syntax.

-- name: stream_id
-- The id of a stream's rows, made on first use. Two processes making it at once both end with
-- the row of whichever committed first; but the one whose insert waited for the other's
-- finds no row here (its snapshot was taken before that commit) and runs this again.
WITH made AS (
    INSERT INTO streams (name) VALUES (%(name)s)
    ON CONFLICT ON CONSTRAINT streams_name_key DO NOTHING
    RETURNING id
)
SELECT id FROM made UNION ALL SELECT id FROM streams WHERE name = %(name)s;

-- name: share_floor
-- First in every settling transaction. The lock (one per stream) is shared with other settling
-- transactions and exclusive with raise_floor and with the turns of the dedup generations, so
-- the floor and the generations that the statements after this one read (each with a snapshot
-- taken once the lock is held; not this one, whose snapshot was taken before it waited) cannot
-- change before this transaction commits. The second lock, shared by every stream, is
-- exclusive with adding and dropping partitions of `events`.
SELECT pg_advisory_xact_lock_shared(%(lock)s::int4, %(stream)s::int4),
       pg_advisory_xact_lock_shared(%(partitions_lock)s::int4, 0);

-- name: gate
-- Right after share_floor: the settled floor, the stream's generations of dedup keys and its
-- forgotten horizon, which the settling statements take as parameters, read once. (They do not
-- make PostgreSQL prune the partitions of other generations: a prepared statement's generic
-- plan cannot prune by `= ANY(<array parameter>)`; see insert_unique's `fresh`.)
SELECT floor_ms, floor_seq, generation, older_generations, forgotten_ms, forgotten_at_ms,
       forgotten_at_seq
FROM streams WHERE id = %(stream)s;

-- name: floor_lock_timeout
-- Bounds the wait for lock_floor (see Store.raise_floor), for this transaction only.
SELECT set_config('lock_timeout', %(lock_timeout)s, true);

-- name: lock_floor
SELECT pg_advisory_xact_lock(%(lock)s::int4, %(stream)s::int4);

-- name: raise_floor
UPDATE streams SET floor_ms = %(ms)s, floor_seq = %(seq)s
WHERE id = %(stream)s AND (floor_ms, floor_seq) < (%(ms)s, %(seq)s);

-- name: prune_ledger
DELETE FROM duplicate_entries
WHERE stream = %(stream)s AND (stream_ms, stream_seq) < (%(ms)s, %(seq)s);

-- name: generations
-- The stream's generations of dedup keys: current, older (live), or made ahead.
SELECT g.id, g.opened_ms, g.closed_ms, g.id = s.generation AS current,
       g.id = ANY(s.older_generations) AS older, s.forgotten_ms
FROM streams s JOIN key_generations g ON g.stream = s.id
WHERE s.id = %(stream)s
ORDER BY g.id;

-- name: new_generation
SELECT logagg_new_generation(%(stream)s::smallint);

-- name: turn_generation
-- Under the exclusive floor lock: `next` (made ahead) takes the stream's new keys from now on;
-- the current one, if any, becomes an older generation, looked up but never inserted into.
-- Without a clock given, the database's (a stream's first generation).
WITH clock AS (
    SELECT coalesce(%(now_ms)s::bigint,
                    (extract(epoch FROM clock_timestamp()) * 1000)::bigint) AS ms
), opened AS (
    UPDATE key_generations SET opened_ms = (SELECT ms FROM clock)
    WHERE id = %(next)s AND stream = %(stream)s AND opened_ms IS NULL
    RETURNING id
), closed AS (
    -- Closed no earlier than its newest key's position (read under the lock: every insert
    -- into it committed), should positions run ahead of the clock given (one gone back).
    UPDATE key_generations
    SET closed_ms = greatest((SELECT ms FROM clock),
                             (SELECT stream_ms FROM events WHERE stream = %(stream)s
                              ORDER BY stream_ms DESC, stream_seq DESC LIMIT 1))
    WHERE id = (SELECT generation FROM streams WHERE id = %(stream)s)
      AND EXISTS (SELECT 1 FROM opened)
)
UPDATE streams
SET older_generations = CASE WHEN generation IS NULL THEN older_generations
                             ELSE older_generations || generation END,
    generation = %(next)s
WHERE id = %(stream)s AND EXISTS (SELECT 1 FROM opened)
RETURNING generation;

-- name: forget_generation
-- Under the exclusive floor lock: the stream stops looking the generation up, and the
-- forgotten horizon rises to where its keys' windows end (see services/consumer/retention.py).
-- Its partition is dropped only if it was an older generation of this stream.
-- Every entry counted against it was settled before, at or below the highest position the
-- store holds as settled now (read under the lock): `forgotten_at` rises to it.
WITH high AS (
    SELECT stream_ms, stream_seq FROM (
        (SELECT stream_ms, stream_seq FROM events WHERE stream = %(stream)s
         ORDER BY stream_ms DESC, stream_seq DESC LIMIT 1)
        UNION ALL
        (SELECT stream_ms, stream_seq FROM duplicate_entries WHERE stream = %(stream)s
         ORDER BY stream_ms DESC, stream_seq DESC LIMIT 1)
        UNION ALL
        SELECT 0, 0
    ) AS settled
    ORDER BY stream_ms DESC, stream_seq DESC
    LIMIT 1
), forgotten AS (
    UPDATE streams AS s
    SET older_generations = array_remove(older_generations, %(generation)s::integer),
        forgotten_ms = greatest(forgotten_ms, %(forgotten_ms)s),
        (forgotten_at_ms, forgotten_at_seq) = (
            SELECT CASE WHEN (h.stream_ms, h.stream_seq) > (s.forgotten_at_ms, s.forgotten_at_seq)
                        THEN h.stream_ms ELSE s.forgotten_at_ms END,
                   CASE WHEN (h.stream_ms, h.stream_seq) > (s.forgotten_at_ms, s.forgotten_at_seq)
                        THEN h.stream_seq ELSE s.forgotten_at_seq END
            FROM high h)
    WHERE id = %(stream)s AND %(generation)s::integer = ANY(older_generations)
    RETURNING id
)
SELECT logagg_drop_generation(%(generation)s::integer) FROM forgotten;

-- name: expire_dead_letters
-- Dead letters of events received before `before_ms`, up to `rows` of them. Only below the
-- settled floor and the forgotten horizon: a late delivery of such an entry changes nothing
-- (insert_unique), so the letter is not needed to keep it from being stored.
DELETE FROM dead_letters AS d
USING (SELECT l.stream_ms, l.stream_seq
       FROM dead_letters l JOIN streams s ON s.id = l.stream
       WHERE l.stream = %(stream)s AND l.stream_ms < %(before_ms)s
         AND l.stream_ms < s.forgotten_ms
         AND (l.stream_ms, l.stream_seq) < (s.floor_ms, s.floor_seq)
       ORDER BY l.stream_ms, l.stream_seq
       LIMIT %(rows)s) AS old
WHERE d.stream = %(stream)s AND d.stream_ms = old.stream_ms AND d.stream_seq = old.stream_seq;

-- name: event_partitions
SELECT lower_ms, upper_ms FROM event_partitions ORDER BY lower_ms;

-- name: lock_partitions
SELECT pg_advisory_xact_lock(%(partitions_lock)s::int4, 0);

-- name: add_event_partition
SELECT logagg_add_event_partition(%(lower_ms)s, %(upper_ms)s);

-- name: drop_event_partition
SELECT logagg_drop_event_partition(%(lower_ms)s);

-- name: tables_answer
-- Reads one row of every table a settling transaction touches (none, when empty): fails if
-- one is missing or unreadable. See services/consumer/retry.py `store_answers`.
SELECT (SELECT 1 FROM events LIMIT 1), (SELECT 1 FROM duplicate_entries LIMIT 1),
       (SELECT 1 FROM topic_stats LIMIT 1), (SELECT 1 FROM dead_letters LIMIT 1),
       (SELECT 1 FROM streams LIMIT 1), (SELECT 1 FROM dedup_keys LIMIT 1),
       (SELECT 1 FROM event_partitions LIMIT 1);

-- name: floor
SELECT floor_ms, floor_seq FROM streams WHERE id = %(stream)s;

-- name: mark
SELECT mark FROM streams WHERE id = %(stream)s;

-- name: raise_mark
UPDATE streams SET mark = greatest(mark, %(mark)s) WHERE id = %(stream)s;

-- name: settled_high
-- The highest position of this stream the store holds as settled: a stored copy or a counted
-- duplicate (dead letters are left out: a `deleted` letter's entry is gone from the stream by
-- definition). Each branch is one step down an index.
SELECT stream_ms, stream_seq FROM (
    (SELECT stream_ms, stream_seq FROM events WHERE stream = %(stream)s
     ORDER BY stream_ms DESC, stream_seq DESC LIMIT 1)
    UNION ALL
    (SELECT stream_ms, stream_seq FROM duplicate_entries WHERE stream = %(stream)s
     ORDER BY stream_ms DESC, stream_seq DESC LIMIT 1)
) AS highest
ORDER BY stream_ms DESC, stream_seq DESC
LIMIT 1;

-- name: raise_alarm
INSERT INTO alarms AS a (stream, kind, message) VALUES (%(stream)s, %(kind)s, %(message)s)
ON CONFLICT ON CONSTRAINT alarms_pkey DO UPDATE
SET message = excluded.message, last_seen = now()
RETURNING (xmax = 0) AS raised;

-- name: alarms
SELECT kind, message, since, last_seen FROM alarms WHERE stream = %(stream)s ORDER BY since, kind;

-- name: clear_alarm
DELETE FROM alarms WHERE stream = %(stream)s AND kind = %(kind)s;

-- name: insert_unique
-- Store the first copy of every key of the batch that is not known yet: its key goes into the
-- stream's current generation of dedup_keys, its event into `events`. A key of an older live
-- generation is known (no two live generations hold the same key: sql/0008_retention.sql).
-- Keys go in sorted, so that two consumers inserting overlapping keys lock them in the same
-- order and cannot deadlock; a key that another transaction is inserting waits for it, then
-- is skipped.
-- An entry given up on (a dead letter) is never stored by a late delivery of it: it is counted
-- already. Below the settled floor, too, a key not known yet was never settled (a copy of a
-- known key is what the floor's pruned ledger forgets), so it is stored like any other; unless
-- the entry was also received before the forgotten horizon: then its key may be forgotten, and
-- the entry, below the floor, was settled (a consumer held up past the window, coming back
-- with a batch settled long ago): it changes nothing.
-- Each event's expiry (given) is placed inside the partitions that exist: never below the
-- oldest (an event settled after its expiry stays until that one is dropped), never past the
-- newest (housekeeping makes them ahead; the caller reports one placed short). With no finite
-- partition at all, it is kept. Returns each stored copy's topic, position, whether it was
-- received before the forgotten horizon, and its expiry as placed.
WITH batch AS (
    SELECT *
    FROM unnest(%(topics)b::text[], %(event_ids)b::text[], %(timestamps)b::text[],
                %(sources)b::text[], %(payloads)b::text[], %(stream_ms)b::bigint[],
                %(stream_seq)b::bigint[], %(expires)b::bigint[])
         AS b(topic, event_id, ts, source, payload, stream_ms, stream_seq, expires)
), firsts AS (
    SELECT DISTINCT ON (b.topic, b.event_id) b.*
    FROM batch b
    -- Counted as a duplicate already: its key was forgotten since, but this entry is a
    -- redelivery, which changes nothing (the ledger holds every position above the floor).
    -- Only an entry settled before a generation was forgotten can be one: at or below the
    -- highest position settled then (`forgotten_at`); the others, nearly all, skip the probe.
    -- OFFSET 0 keeps it a probe of the ledger's index for each entry: without it the
    -- planner may make it a join, and hash the stream's whole ledger for every batch.
    WHERE ((b.stream_ms, b.stream_seq) > (%(forgotten_at_ms)b::bigint,
                                          %(forgotten_at_seq)b::bigint)
           OR NOT EXISTS (SELECT 1 FROM duplicate_entries l
                          WHERE l.stream = %(stream)b::smallint AND l.stream_ms = b.stream_ms
                            AND l.stream_seq = b.stream_seq
                          OFFSET 0))
      AND NOT (b.stream_ms < %(forgotten_ms)b::bigint
               AND (b.stream_ms, b.stream_seq) < (%(floor_ms)b::bigint, %(floor_seq)b::bigint))
      AND NOT EXISTS (SELECT 1 FROM dead_letters d
                      WHERE d.stream = %(stream)b::smallint AND d.stream_ms = b.stream_ms
                        AND d.stream_seq = b.stream_seq)
    ORDER BY b.topic, b.event_id, b.stream_ms, b.stream_seq
), fresh AS (
    -- Not in an older generation: a probe for each key, as above, unless there is no older
    -- generation (most of the time). The test of `older` comes first and is what spares the
    -- probe: once psycopg prepares the statement and PostgreSQL keeps a generic plan, nothing
    -- prunes partitions by `generation = ANY(<array parameter>)` (only by a constant array,
    -- in a plan made for the values), so the probe would descend the index of every
    -- generation's partition, the current one and those made ahead included.
    SELECT f.*
    FROM firsts f
    WHERE cardinality(%(older)s::integer[]) = 0
       OR NOT EXISTS (SELECT 1 FROM dedup_keys k
                      WHERE k.topic = f.topic AND k.event_id = f.event_id
                        AND k.generation = ANY(%(older)s::integer[])
                      OFFSET 0)
), keys AS (
    INSERT INTO dedup_keys (generation, topic, event_id, stream_ms, stream_seq)
    SELECT %(generation)b::integer, topic, event_id, stream_ms, stream_seq
    FROM fresh
    ORDER BY topic, event_id
    ON CONFLICT (topic, event_id, generation) DO NOTHING
    RETURNING topic, event_id
), bounds AS MATERIALIZED (  -- once, not for each event
    SELECT min(lower_ms) AS lower_ms, max(upper_ms) AS upper_ms FROM event_partitions
), stored AS (
    INSERT INTO events (stream, topic, event_id, "timestamp", source, payload, stream_ms,
                        stream_seq, expires_ms)
    SELECT %(stream)b::smallint, f.topic, f.event_id, f.ts::timestamptz, f.source,
           f.payload::jsonb, f.stream_ms, f.stream_seq,
           CASE WHEN f.expires >= 4611686018427387904 OR p.lower_ms IS NULL
                    THEN 4611686018427387904
                ELSE least(greatest(f.expires, p.lower_ms), p.upper_ms - 1) END
    FROM keys k
    JOIN firsts f ON f.topic = k.topic AND f.event_id = k.event_id
    CROSS JOIN bounds p
    ORDER BY f.stream_ms, f.stream_seq
    RETURNING topic, stream_ms, stream_seq, expires_ms
)
SELECT topic, stream_ms, stream_seq, stream_ms < %(forgotten_ms)b::bigint AS late,
       expires_ms
FROM stored;

-- name: count_batch
-- Runs after insert_unique, in the same transaction but with a fresh snapshot, so it sees every
-- copy stored by then, ours and those committed by other consumers meanwhile. It is given the
-- entries insert_unique did not store.
-- Every entry counted as a duplicate gets a row in the duplicate ledger, and only an insert
-- into the ledger counts one: a redelivered duplicate finds its row and adds nothing.
-- - An entry whose key is stored under an earlier position is a duplicate.
-- - An entry whose key is stored under its own position is the stored copy (redelivered).
-- - An entry whose key is stored under a *later* position is the first accepted copy (SPEC §2),
--   beaten to the commit by a later one: the row moves to it (`moved`), and the copy the row
--   held becomes the duplicate.
-- Why each entry is counted once whatever the interleaving: a key's stored position only ever
-- falls (a key is inserted once; a move goes to an earlier copy), and every move starts from
-- the row's latest version under a row lock (`held`), so the copy it displaces is the one really
-- there, and its mover counts it. Every other entry is judged against a position no higher than
-- the one stored when this transaction commits, and no higher than the batch's first copy: the
-- locked latest version for the keys in `held`; the snapshot's for the others, which is at most
-- the first copy. Above that position an entry is a duplicate; at it, it is the stored copy,
-- which stays, or is displaced and counted by its mover. The snapshot alone would not do for the
-- keys in `held`: another transaction may move such a row below the batch's first copy after
-- this snapshot was taken, and judged by the snapshot's higher position, the batch's entries
-- between the two were counted by no one.
-- Keys are looked up in the stream's live generations of dedup_keys, where a key is at most
-- once (sql/0008_retention.sql); a move changes the key's row there, and returns what the
-- caller's next statement (move_events) does to the stored event.
-- The counters move in the same transaction as the rows they count. Returns the ledger rows
-- written (`duplicate`: this batch's duplicates, and the copies its entries displaced), and
-- the moves (`moved`: the new position, and the one the stored copy held).
WITH batch AS (
    -- Keys and positions only: what a copy holds is not needed to count it (move_events
    -- takes the content of a moved key's new copy).
    SELECT *
    FROM unnest(%(topics)b::text[], %(event_ids)b::text[], %(stream_ms)b::bigint[],
                %(stream_seq)b::bigint[])
         AS b(topic, event_id, stream_ms, stream_seq)
), first_copies AS (
    -- Each key's first copy among the entries not given up on, as insert_unique picks it: a
    -- late delivery of a dead letter before a live copy must not hide the live one, nor may an
    -- entry settled before its key was forgotten (insert_unique) move the key's new copy.
    SELECT DISTINCT ON (b.topic, b.event_id) b.*
    FROM batch b
    -- Nor an entry counted as a duplicate before: of a key forgotten since, and stored
    -- again from a later copy, which it must not displace (without a window it could not
    -- be earlier than its key's stored copy anyway: positions only fall). Probed per entry,
    -- as in insert_unique, and only where insert_unique probes.
    WHERE ((b.stream_ms, b.stream_seq) > (%(forgotten_at_ms)b::bigint,
                                          %(forgotten_at_seq)b::bigint)
           OR NOT EXISTS (SELECT 1 FROM duplicate_entries l
                          WHERE l.stream = %(stream)b::smallint AND l.stream_ms = b.stream_ms
                            AND l.stream_seq = b.stream_seq
                          OFFSET 0))
      AND NOT EXISTS (SELECT 1 FROM dead_letters d
                      WHERE d.stream = %(stream)b::smallint AND d.stream_ms = b.stream_ms
                        AND d.stream_seq = b.stream_seq)
      AND NOT (b.stream_ms < %(forgotten_ms)b::bigint
               AND (b.stream_ms, b.stream_seq) < (%(floor_ms)b::bigint, %(floor_seq)b::bigint))
    ORDER BY b.topic, b.event_id, b.stream_ms, b.stream_seq
), stale AS (
    -- The keys stored, as the snapshot saw them, under a later position than the batch's first
    -- copy: the only ones it may move.
    -- Every key lookup is a lateral probe: a join the planner could turn into a hash of the
    -- whole generation, for every batch, when the table's statistics are those of an empty one
    -- (a generation's partition is new; a prepared statement keeps the plan).
    SELECT b.topic, b.event_id
    FROM first_copies b
    JOIN LATERAL (SELECT k.stream_ms, k.stream_seq FROM dedup_keys k
                  WHERE k.topic = b.topic AND k.event_id = b.event_id
                    AND k.generation = ANY(%(live)s::integer[])
                  LIMIT 1) AS k ON true
    WHERE (k.stream_ms, k.stream_seq) > (b.stream_ms, b.stream_seq)
), held AS (
    -- Their rows locked, in key order, and read at their latest version: one moved meanwhile
    -- by another transaction is read again once that commits. Matched by key only, so that
    -- such a row is returned wherever it moved (a position condition here would be checked
    -- again on the new version, and drop the row: that is how the snapshot's position slipped
    -- into the counting).
    SELECT k.topic, k.event_id, k.stream_ms, k.stream_seq
    FROM stale s
    JOIN dedup_keys k
      ON k.topic = s.topic AND k.event_id = s.event_id
     AND k.generation = ANY(%(live)s::integer[])
    ORDER BY k.topic, k.event_id
    FOR UPDATE OF k
), later AS (
    SELECT h.stream_ms AS held_ms, h.stream_seq AS held_seq, b.*
    FROM first_copies b
    JOIN held h ON h.topic = b.topic AND h.event_id = b.event_id
    WHERE (h.stream_ms, h.stream_seq) > (b.stream_ms, b.stream_seq)
), moved AS (
    UPDATE dedup_keys AS k
    SET stream_ms = l.stream_ms, stream_seq = l.stream_seq
    FROM later l
    -- By key, not by the row's ctid: when `held` waited for a concurrent move, the ctid it
    -- read can be the version that move replaced, which this update would then skip.
    WHERE k.topic = l.topic AND k.event_id = l.event_id
      AND k.generation = ANY(%(live)s::integer[])
      AND (k.stream_ms, k.stream_seq) > (l.stream_ms, l.stream_seq)
    RETURNING l.topic, l.event_id, l.stream_ms, l.stream_seq, l.held_ms, l.held_seq
), counted_as_duplicates AS (
    SELECT b.stream_ms, b.stream_seq, b.topic, b.event_id
    FROM batch b
    JOIN LATERAL (SELECT e.stream_ms, e.stream_seq FROM dedup_keys e
                  WHERE e.topic = b.topic AND e.event_id = b.event_id
                    AND e.generation = ANY(%(live)s::integer[])
                  LIMIT 1) AS e ON true
    -- The stored copy as this statement leaves it: moved to this batch's first copy, else the
    -- latest version where the row is locked, else the snapshot's (see above).
    LEFT JOIN held h ON h.topic = b.topic AND h.event_id = b.event_id
    LEFT JOIN moved m ON m.topic = b.topic AND m.event_id = b.event_id
    WHERE (coalesce(m.stream_ms, h.stream_ms, e.stream_ms),
           coalesce(m.stream_seq, h.stream_seq, e.stream_seq)) < (b.stream_ms, b.stream_seq)
      -- Below the floor the ledger is pruned: a copy from there cannot be told from a
      -- redelivery of one counted long ago, and is not counted (SPEC §4's alarm covers how
      -- a first delivery could land there).
      AND (b.stream_ms, b.stream_seq)
          >= (%(floor_ms)b::bigint, %(floor_seq)b::bigint)
      AND NOT EXISTS (SELECT 1 FROM dead_letters d
                      WHERE d.stream = %(stream)b::smallint AND d.stream_ms = b.stream_ms
                        AND d.stream_seq = b.stream_seq)
    UNION  -- a displaced copy may be in this batch too: one row, counted once
    SELECT l.held_ms, l.held_seq, l.topic, l.event_id FROM later l
), duplicates AS (
    INSERT INTO duplicate_entries (stream, stream_ms, stream_seq, topic, event_id)
    SELECT %(stream)b::smallint, stream_ms, stream_seq, topic, event_id
    FROM counted_as_duplicates
    ORDER BY stream_ms, stream_seq
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
    INSERT INTO topic_stats AS s (stream, topic, shard, unique_processed, duplicate_dropped,
                                  dead_lettered)
    SELECT %(stream)b::smallint, topic, %(shard)b::smallint, unique_processed,
           duplicate_dropped, -revived
    FROM deltas ORDER BY topic
    ON CONFLICT ON CONSTRAINT topic_stats_pkey DO UPDATE
    SET unique_processed = s.unique_processed + excluded.unique_processed,
        duplicate_dropped = s.duplicate_dropped + excluded.duplicate_dropped,
        dead_lettered = s.dead_lettered + excluded.dead_lettered
)
SELECT 'duplicate' AS kind, stream_ms, stream_seq, NULL::bigint AS held_ms,
       NULL::bigint AS held_seq
FROM duplicates
UNION ALL
SELECT 'moved', stream_ms, stream_seq, held_ms, held_seq FROM moved;

-- name: move_events
-- The stored events of keys that count_batch moved to an earlier copy, in the same
-- transaction, as a statement of its own: count_batch holds the keys' rows locked, so every
-- earlier move of them committed, and this statement's fresh snapshot sees the event where
-- the last one left it (count_batch's snapshot may be older). The event stays in its
-- partition: its expiry is that of the copy stored first, a moment later at most.
UPDATE events AS e
SET "timestamp" = m.ts::timestamptz, source = m.source, payload = m.payload::jsonb,
    stream_ms = m.stream_ms, stream_seq = m.stream_seq
FROM unnest(%(held_ms)b::bigint[], %(held_seq)b::bigint[], %(stream_ms)b::bigint[],
            %(stream_seq)b::bigint[], %(timestamps)b::text[], %(sources)b::text[],
            %(payloads)b::text[])
     AS m(held_ms, held_seq, stream_ms, stream_seq, ts, source, payload)
WHERE e.stream = %(stream)b::smallint AND e.stream_ms = m.held_ms
  AND e.stream_seq = m.held_seq;

-- name: revive_dead_letters
-- Entries that replay a dead letter take it back from the dead, once: a second replay of the
-- same letter, or a redelivery of a replay already settled, finds it revived and does nothing.
-- A concurrent replay of the same letter waits on its row lock, then finds it revived too.
UPDATE dead_letters AS d
SET status = 'replayed', replayed_at = now()
FROM unnest(%(replay_ms)s::bigint[], %(replay_seq)s::bigint[]) AS r(stream_ms, stream_seq)
WHERE d.stream = %(stream)s AND d.stream_ms = r.stream_ms AND d.stream_seq = r.stream_seq
  AND d.status = 'dead'
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
    INSERT INTO dead_letters (stream, stream_ms, stream_seq, topic, event_id, event, reason,
                              last_error, deliveries)
    SELECT %(stream)s, l.stream_ms, l.stream_seq, l.topic, l.event_id, l.event, l.reason,
           l.last_error, l.deliveries
    FROM letters l
    WHERE l.replay_ms IS NULL
      AND NOT EXISTS (SELECT 1 FROM events e
                      WHERE e.stream = %(stream)s AND e.stream_ms = l.stream_ms
                        AND e.stream_seq = l.stream_seq)
      AND NOT EXISTS (SELECT 1 FROM duplicate_entries d
                      WHERE d.stream = %(stream)s AND d.stream_ms = l.stream_ms
                        AND d.stream_seq = l.stream_seq)
    ORDER BY l.stream_ms, l.stream_seq
    ON CONFLICT ON CONSTRAINT dead_letters_pkey DO NOTHING
    RETURNING coalesce(topic, '') AS topic, reason <> 'undecodable' AS counted
), still_dead AS (
    UPDATE dead_letters AS d
    SET last_error = l.last_error
    FROM letters l
    WHERE d.stream = %(stream)s AND d.stream_ms = l.replay_ms AND d.stream_seq = l.replay_seq
      AND d.status = 'dead'
), counted AS (
    INSERT INTO topic_stats AS s (stream, topic, shard, dead_lettered)
    SELECT %(stream)s, topic, %(shard)s::smallint, count(*) FROM fresh WHERE counted
    GROUP BY topic ORDER BY topic
    ON CONFLICT ON CONSTRAINT topic_stats_pkey DO UPDATE
    SET dead_lettered = s.dead_lettered + excluded.dead_lettered
)
SELECT count(*) FILTER (WHERE counted) FROM fresh;

-- name: dead_letters
SELECT stream_ms, stream_seq, topic, event_id, event, reason, last_error, deliveries, status,
       dead_lettered_at, replayed_at
FROM dead_letters
WHERE stream = %(stream)s AND (stream_ms, stream_seq) > (%(after_ms)s, %(after_seq)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
ORDER BY stream_ms, stream_seq
LIMIT %(limit)s;

-- name: dead_letters_by_position
SELECT stream_ms, stream_seq, topic, event_id, event, reason, last_error, deliveries, status,
       dead_lettered_at, replayed_at
FROM dead_letters AS d
JOIN unnest(%(stream_ms)s::bigint[], %(stream_seq)s::bigint[]) AS p(ms, seq)
  ON d.stream = %(stream)s AND d.stream_ms = p.ms AND d.stream_seq = p.seq
ORDER BY stream_ms, stream_seq;

-- name: without_jit
-- For this transaction: compiling a plan to machine code costs a third of a second when the
-- planner's estimates run high (a counter table just emptied by a fold, until autovacuum
-- counts its rows again), for a read that takes milliseconds.
SELECT set_config('jit', 'off', true);

-- name: stats
-- The counters /stats shows, in one statement (one snapshot: a fold moves counts between the
-- tables in one transaction, so no sum here ever sees them twice or not at all): the `top`
-- busiest topics (all of them when NULL), by unique_processed + duplicate_dropped, then by
-- name; then one row of NULL topic with the stream's totals and its number of topics. The
-- topic '' (dead letters whose topic could not be read) counts in the totals only.
-- What it reads grows with `top` and the shard rows not folded yet, not with the topics: the
-- busiest folded topics come from an index, and every topic with shard rows is a candidate.
-- That is exact because no topic's volume goes down: a topic outside the folded top N is
-- below each of them, and they only gain from their shard rows.
WITH recent AS (
    SELECT topic, sum(unique_processed)::bigint AS unique_processed,
           sum(duplicate_dropped)::bigint AS duplicate_dropped,
           sum(dead_lettered)::bigint AS dead_lettered
    FROM topic_stats
    WHERE stream = %(stream)s
    GROUP BY topic
), candidates AS (
    (SELECT topic FROM topic_totals
     WHERE stream = %(stream)s AND topic <> ''
     ORDER BY unique_processed + duplicate_dropped DESC, topic
     LIMIT %(top)s)
    UNION
    SELECT topic FROM recent WHERE topic <> ''
), counted AS (
    SELECT c.topic,
           coalesce(t.unique_processed, 0) + coalesce(r.unique_processed, 0) AS unique_processed,
           coalesce(t.duplicate_dropped, 0) + coalesce(r.duplicate_dropped, 0)
               AS duplicate_dropped,
           coalesce(t.dead_lettered, 0) + coalesce(r.dead_lettered, 0) AS dead_lettered
    FROM candidates c
    LEFT JOIN topic_totals t ON t.stream = %(stream)s AND t.topic = c.topic
    LEFT JOIN recent r ON r.topic = c.topic
)
SELECT topic, unique_processed, duplicate_dropped, dead_lettered, topics
FROM (
    (SELECT topic, unique_processed, duplicate_dropped, dead_lettered, NULL::bigint AS topics
     FROM counted
     ORDER BY unique_processed + duplicate_dropped DESC, topic
     LIMIT %(top)s)
    UNION ALL
    SELECT NULL,
           (coalesce((SELECT unique_processed FROM stream_totals WHERE stream = %(stream)s), 0)
            + coalesce((SELECT sum(unique_processed) FROM recent), 0))::bigint,
           (coalesce((SELECT duplicate_dropped FROM stream_totals WHERE stream = %(stream)s), 0)
            + coalesce((SELECT sum(duplicate_dropped) FROM recent), 0))::bigint,
           (coalesce((SELECT dead_lettered FROM stream_totals WHERE stream = %(stream)s), 0)
            + coalesce((SELECT sum(dead_lettered) FROM recent), 0))::bigint,
           coalesce((SELECT topics FROM stream_totals WHERE stream = %(stream)s), 0)
           + (SELECT count(*) FROM recent r
              WHERE r.topic <> ''
                AND NOT EXISTS (SELECT 1 FROM topic_totals t
                                WHERE t.stream = %(stream)s AND t.topic = r.topic))
) AS answer
-- the topics, busiest first, then the totals (topic NULL)
ORDER BY topic IS NULL, unique_processed + duplicate_dropped DESC, topic;

-- name: fold_lock
-- One fold at a time per stream (two would only wait for each other's rows), for this
-- transaction: false when another holds it.
SELECT pg_try_advisory_xact_lock(%(lock)s::int4, %(stream)s::int4);

-- name: fold_counters
-- Move up to `rows` counter shard rows into topic_totals and stream_totals, in the caller's
-- transaction: sums over both tables are the same before and after. Rows a settling
-- transaction holds are skipped (the next fold takes them), so a fold never waits for one;
-- a settling transaction that wants a row the fold took waits for the fold's commit, then
-- inserts it anew. Returns the shard rows moved.
WITH taken AS (
    SELECT topic, shard
    FROM topic_stats
    WHERE stream = %(stream)s
    ORDER BY topic, shard  -- down the primary key, past the index entries of rows folded
    LIMIT %(rows)s
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM topic_stats AS s
    USING taken
    WHERE s.stream = %(stream)s AND s.topic = taken.topic AND s.shard = taken.shard
    RETURNING s.topic, s.unique_processed, s.duplicate_dropped, s.dead_lettered
), sums AS (
    SELECT topic, sum(unique_processed)::bigint AS unique_processed,
           sum(duplicate_dropped)::bigint AS duplicate_dropped,
           sum(dead_lettered)::bigint AS dead_lettered
    FROM moved
    GROUP BY topic
), folded AS (
    INSERT INTO topic_totals AS t (stream, topic, unique_processed, duplicate_dropped,
                                   dead_lettered)
    SELECT %(stream)s, topic, unique_processed, duplicate_dropped, dead_lettered
    FROM sums ORDER BY topic
    ON CONFLICT ON CONSTRAINT topic_totals_pkey DO UPDATE
    SET unique_processed = t.unique_processed + excluded.unique_processed,
        duplicate_dropped = t.duplicate_dropped + excluded.duplicate_dropped,
        dead_lettered = t.dead_lettered + excluded.dead_lettered
    RETURNING topic, (xmax = 0) AS new
), totals AS (
    INSERT INTO stream_totals AS st (stream, topics, unique_processed, duplicate_dropped,
                                     dead_lettered)
    SELECT %(stream)s, (SELECT count(*) FROM folded WHERE new AND topic <> ''),
           sum(unique_processed), sum(duplicate_dropped), sum(dead_lettered)
    FROM sums
    HAVING count(*) > 0
    ON CONFLICT ON CONSTRAINT stream_totals_pkey DO UPDATE
    SET topics = st.topics + excluded.topics,
        unique_processed = st.unique_processed + excluded.unique_processed,
        duplicate_dropped = st.duplicate_dropped + excluded.duplicate_dropped,
        dead_lettered = st.dead_lettered + excluded.dead_lettered
)
SELECT count(*) FROM moved;

-- name: stream_topics
-- Every topic this stream counts (the topic '' left out), in no order.
SELECT topic FROM topic_totals WHERE stream = %(stream)s AND topic <> ''
UNION
SELECT topic FROM topic_stats WHERE stream = %(stream)s AND topic <> '';

-- name: counted_topics
-- Which of these topics this stream counts (the topic '' left out).
SELECT topic FROM topic_totals
WHERE stream = %(stream)s AND topic = ANY(%(topics)s::text[]) AND topic <> ''
UNION
SELECT topic FROM topic_stats
WHERE stream = %(stream)s AND topic = ANY(%(topics)s::text[]) AND topic <> '';

-- name: events_page
-- Pages stop below the first position the group may not have settled (`below`): an entry still
-- in flight there may commit later, and a cursor handed out past it would skip it for good.
SELECT topic, event_id, "timestamp", source, payload::text AS payload, stream_ms, stream_seq
FROM events
WHERE stream = %(stream)s AND (stream_ms, stream_seq) > (%(after_ms)s, %(after_seq)s)
  AND (stream_ms, stream_seq) < (%(below_ms)s, %(below_seq)s)
ORDER BY stream_ms, stream_seq
LIMIT %(limit)s;

-- name: events_page_of_topic
SELECT topic, event_id, "timestamp", source, payload::text AS payload, stream_ms, stream_seq
FROM events
WHERE stream = %(stream)s AND topic = %(topic)s
  AND (stream_ms, stream_seq) > (%(after_ms)s, %(after_seq)s)
  AND (stream_ms, stream_seq) < (%(below_ms)s, %(below_seq)s)
ORDER BY stream_ms, stream_seq
LIMIT %(limit)s;

-- name: create_key
INSERT INTO api_keys (name, prefix, digest, scopes, topics, source, rate, burst)
VALUES (%(name)s, %(prefix)s, %(digest)s, %(scopes)s, %(topics)s, %(source)s, %(rate)s,
        %(burst)s)
ON CONFLICT ON CONSTRAINT api_keys_digest_key DO NOTHING
RETURNING id, name, prefix, digest, scopes, topics, source, rate, burst, created_at,
          revoked_at;

-- name: key_by_digest
SELECT id, name, prefix, digest, scopes, topics, source, rate, burst, created_at, revoked_at
FROM api_keys
WHERE digest = %(digest)s;

-- name: all_keys
SELECT id, name, prefix, digest, scopes, topics, source, rate, burst, created_at, revoked_at
FROM api_keys
ORDER BY id;

-- name: live_keys
SELECT id, name, prefix, digest, scopes, topics, source, rate, burst, created_at, revoked_at
FROM api_keys
WHERE revoked_at IS NULL;

-- name: keys_version
-- Every committed change raises this sum (it takes a new, larger version), so an ingest that
-- saw the same sum before holds every key as it stands.
SELECT coalesce(sum(version), 0)::numeric FROM api_keys;

-- name: revoke_key
UPDATE api_keys SET revoked_at = now(), version = nextval('api_key_versions')
WHERE id = %(id)s AND revoked_at IS NULL
RETURNING id;
