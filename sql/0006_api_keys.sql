-- API keys (SPEC §3a). The secret itself is never stored: only its SHA-256 digest, which ingest
-- looks a presented key up by, and a short public prefix to tell keys apart in `keys list`.
-- Keys are revoked, never deleted, so `list` keeps their history and an id is never reused.
CREATE SEQUENCE api_key_versions;

CREATE TABLE api_keys (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL,
    prefix     text        NOT NULL,
    digest     bytea       NOT NULL,
    scopes     text[]      NOT NULL,
    -- NULL: every topic. Otherwise exact names, or prefixes written `name*`.
    topics     text[],
    source     text,        -- NULL: any source; else every event must carry this one
    rate       double precision,  -- events/s; NULL: no limit
    burst      double precision,  -- events at once; NULL with rate NULL
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    -- Each change (creation, revocation) takes a new number: ingest processes poll the sum of
    -- these, which every committed change raises, whatever order changes commit in, and reload
    -- the keys when it moved.
    version    bigint      NOT NULL DEFAULT nextval('api_key_versions'),
    CONSTRAINT api_keys_digest_key UNIQUE (digest),
    CONSTRAINT api_keys_scopes_known CHECK (
        scopes <@ ARRAY['publish', 'read', 'admin'] AND cardinality(scopes) > 0),
    CONSTRAINT api_keys_rate_and_burst CHECK (
        (rate IS NULL AND burst IS NULL) OR (rate > 0 AND burst >= 1))
);
