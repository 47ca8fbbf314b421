-- The store: unique events, the ledger of duplicate stream entries, and the counters.

-- One row per distinct (topic, event_id): the first copy that reached the store.
-- The primary key is the dedup gate; its name is matched in code.
CREATE TABLE events (
    topic       text        NOT NULL,
    event_id    text        NOT NULL,
    "timestamp" timestamptz NOT NULL,
    source      text        NOT NULL,
    payload     jsonb       NOT NULL,
    -- Position of the stored copy in the Redis stream: gives stream order, the received_at
    -- time (Redis stamps ids with its clock) and tells a redelivery of this very entry apart
    -- from a duplicate.
    stream_ms   bigint      NOT NULL,
    stream_seq  bigint      NOT NULL,
    CONSTRAINT events_dedup_key PRIMARY KEY (topic, event_id)
);
CREATE INDEX events_stream_position_idx ON events (stream_ms, stream_seq);
CREATE INDEX events_topic_stream_position_idx ON events (topic, stream_ms, stream_seq);

-- One row per stream entry that was counted as a duplicate. A redelivered entry finds its row
-- here and is not counted again.
CREATE TABLE duplicate_entries (
    stream_ms  bigint NOT NULL,
    stream_seq bigint NOT NULL,
    topic      text   NOT NULL,
    event_id   text   NOT NULL,
    CONSTRAINT duplicate_entries_pkey PRIMARY KEY (stream_ms, stream_seq)
);

-- Counters, changed only in the transaction that settles the entries they count.
CREATE TABLE topic_stats (
    topic             text   NOT NULL,
    unique_processed  bigint NOT NULL DEFAULT 0,
    duplicate_dropped bigint NOT NULL DEFAULT 0,
    dead_lettered     bigint NOT NULL DEFAULT 0,
    CONSTRAINT topic_stats_pkey PRIMARY KEY (topic)
);
