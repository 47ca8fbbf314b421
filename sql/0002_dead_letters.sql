-- Dead letters: accepted events that could not be stored after MAX_DELIVERIES deliveries, or
-- whose stream entry vanished before it was settled. Each is counted once in
-- topic_stats.dead_lettered, in the transaction that writes its row.
CREATE TABLE dead_letters (
    -- Position of the stream entry that was given up on: the letter's id.
    stream_ms        bigint      NOT NULL,
    stream_seq       bigint      NOT NULL,
    topic            text,                   -- NULL when the entry held no readable event
    event_id         text,
    event            bytea,                  -- the entry's event as it was in the stream, if any
    reason           text        NOT NULL,   -- store_rejected | undecodable | deleted
    last_error       text        NOT NULL,
    deliveries       integer     NOT NULL,
    status           text        NOT NULL DEFAULT 'dead',
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    replayed_at      timestamptz,
    CONSTRAINT dead_letters_pkey PRIMARY KEY (stream_ms, stream_seq),
    CONSTRAINT dead_letters_status_check CHECK (status IN ('dead', 'replayed'))
);
CREATE INDEX dead_letters_dead_idx ON dead_letters (stream_ms, stream_seq) WHERE status = 'dead';
