"""Names of everything logagg keeps in Redis, derived from the stream key.

Every key hangs off STREAM_KEY so that two deployments (or two tests) that use different stream
keys share nothing.
"""

from __future__ import annotations

# The one field of a stream entry: the event exactly as validated, as JSON bytes.
EVENT_FIELD = b"e"


def received_key(stream_key: str) -> str:
    """Counter of events answered 202, incremented in the same MULTI/EXEC as their XADDs."""
    return f"{stream_key}:received"
