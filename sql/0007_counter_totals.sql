-- Counters folded, so that /stats reads what it shows and not every topic's shards.
-- Settling transactions still add to the counter shards of topic_stats (0003), which now hold
-- only what was settled since the last fold: housekeeping moves them here, in one transaction
-- per part (shared/store.py `fold_counters`), so that every sum over both tables stays the
-- same at every moment. A topic's counts are its row here plus its shard rows there.
CREATE TABLE topic_totals (
    stream            smallint NOT NULL,
    topic             text     NOT NULL,
    unique_processed  bigint   NOT NULL DEFAULT 0,
    duplicate_dropped bigint   NOT NULL DEFAULT 0,
    dead_lettered     bigint   NOT NULL DEFAULT 0,
    CONSTRAINT topic_totals_pkey PRIMARY KEY (stream, topic)
);
-- The busiest topics first (/stats lists the top N): by the events each topic settled as
-- stored or duplicate, which only ever grow, then by name.
CREATE INDEX topic_totals_volume_idx
    ON topic_totals (stream, (unique_processed + duplicate_dropped) DESC, topic);

-- The sums of topic_totals per stream, and how many topics it holds (the topic '' of
-- undecodable dead letters left out), moved in the same transaction as its rows.
CREATE TABLE stream_totals (
    stream            smallint NOT NULL,
    topics            bigint   NOT NULL DEFAULT 0,
    unique_processed  bigint   NOT NULL DEFAULT 0,
    duplicate_dropped bigint   NOT NULL DEFAULT 0,
    dead_lettered     bigint   NOT NULL DEFAULT 0,
    CONSTRAINT stream_totals_pkey PRIMARY KEY (stream)
);

-- Every count, folded or not, one row per part: sum it by topic (for people and tests; logagg
-- reads the tables itself).
CREATE VIEW topic_counts AS
    SELECT stream, topic, unique_processed, duplicate_dropped, dead_lettered FROM topic_totals
    UNION ALL
    SELECT stream, topic, unique_processed, duplicate_dropped, dead_lettered FROM topic_stats;
