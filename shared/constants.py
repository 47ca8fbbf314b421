"""Names of everything logagg keeps in Redis, derived from the stream key.

Every key hangs off STREAM_KEY so that two deployments (or two tests) that use different stream
keys share nothing.
"""

from __future__ import annotations

# The field of a stream entry that holds the event exactly as validated, as JSON bytes.
EVENT_FIELD = b"e"
# Present only on entries written by `logagg dlq replay`: the id of the dead letter they revive.
REPLAY_FIELD = b"r"


def received_key(stream_key: str) -> str:
    """Counter of events answered 202, incremented in the same script as their XADDs."""
    return f"{stream_key}:received"


def topics_key(stream_key: str) -> str:
    """The set of topics ingest admitted under MAX_TOPICS (shared/lua/admit_topics.lua)."""
    return f"{stream_key}:topics"


def mark_key(stream_key: str) -> str:
    """The broker's copy of the history mark (services/consumer/invariants.py): a number the
    store also records, once Redis has acknowledged it, and that only grows."""
    return f"{stream_key}:mark"


def bucket_key(stream_key: str, key_id: int) -> str:
    """The token bucket of an API key's rate limit (shared/lua/take_tokens.lua)."""
    return f"{stream_key}:rate:{key_id}"
