-- The settled floor: every stream position below it was settled and acked. Housekeeping raises
-- it to the group's safe trim point and prunes the duplicate ledger below it; a settling
-- transaction skips entries below it (a consumer that stalled past its claim, coming back with
-- entries someone else settled long ago), so the pruned ledger rows are never needed again.
CREATE TABLE settled_floor (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    stream_ms  bigint  NOT NULL,
    stream_seq bigint  NOT NULL
);
INSERT INTO settled_floor (stream_ms, stream_seq) VALUES (0, 0);
