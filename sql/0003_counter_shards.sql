-- Counters split into shards. Every transaction that settles entries adds to the counter rows
-- of one shard, picked at random, and holds their locks until it commits. With one row per
-- topic, concurrent consumers queued behind each other's commits on those rows; spread over
-- shards they rarely meet. Totals are sums over the shards.
ALTER TABLE topic_stats ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE topic_stats DROP CONSTRAINT topic_stats_pkey;
ALTER TABLE topic_stats ADD CONSTRAINT topic_stats_pkey PRIMARY KEY (topic, shard);
