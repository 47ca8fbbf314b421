"""The stream entry model: how an accepted event rides the stream, and how a consumer reads it.

An accepted event goes into the stream as the JSON bytes it arrived as (re-serialized once, so
that every copy of the same event is byte for byte the same), under one field. Its stream entry id
gives its place in stream order and the moment it was received.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import orjson

from shared.constants import EVENT_FIELD, REPLAY_FIELD

_STREAM_ID = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")
_BIGINT = 2**63  # positions are stored as PostgreSQL bigints


class StreamId(NamedTuple):
    """A Redis stream entry id, `<ms>-<seq>`, kept as its two integers so that it sorts.

    A named tuple, not a dataclass: a consumer makes one per entry, and a tuple is made fastest.
    """

    ms: int
    seq: int

    @classmethod
    def parse(cls, raw: bytes | str) -> StreamId:
        """Strictly `<digits>-<digits>`, each below 2**63; anything else is a ValueError."""
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
        match = _STREAM_ID.fullmatch(text)
        if match is None:
            raise ValueError(f"not a stream id: {text!r}")
        ms, seq = int(match[1]), int(match[2])
        if ms >= _BIGINT or seq >= _BIGINT:
            raise ValueError(f"stream id out of range: {text!r}")
        return cls(ms, seq)

    @classmethod
    def of_entry(cls, raw: bytes) -> StreamId:
        """An id as Redis itself wrote it: no need for `parse`'s checks."""
        ms, _, seq = raw.partition(b"-")
        return cls(int(ms), int(seq))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    def before(self) -> StreamId:
        """The greatest id below this one (0-0 stays 0-0: nothing is below it)."""
        if self.seq > 0:
            return StreamId(self.ms, self.seq - 1)
        return StreamId(self.ms - 1, _BIGINT - 1) if self.ms > 0 else self

    @property
    def received_at(self) -> datetime:
        """Redis stamps an auto-generated id with its clock when the XADD runs."""
        return datetime.fromtimestamp(self.ms / 1000, tz=UTC)


class Unreadable(ValueError):
    """A stream entry with no event to settle: its fields are gone (the entry was deleted while
    pending: `deleted`) or hold no event we can read (`undecodable`)."""

    def __init__(self, raw_id: bytes, reason: str, detail: str, raw_event: bytes | None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.raw_id = raw_id
        self.id = StreamId.parse(raw_id)
        self.reason = reason
        self.raw_event = raw_event


@dataclass(slots=True)
class Entry:
    """One stream entry as a consumer reads it: its id and the event it carries. (Not frozen:
    a consumer makes one per event, and frozen dataclasses are slower to make.)"""

    raw_id: bytes  # the id as Redis wrote it, for XACK
    id: StreamId
    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: bytes  # the payload object as JSON text, stored as jsonb
    raw_event: bytes = b""  # the event field as it was in the stream, kept for a dead letter
    replay_of: StreamId | None = None  # the dead letter this entry brings back, if any

    @classmethod
    def decode(cls, raw_id: bytes, fields: dict[bytes, bytes] | None) -> Entry:
        """The event of a stream entry, or `Unreadable` saying why there is none."""
        if not fields:
            raise Unreadable(raw_id, "deleted", "the entry left the stream while pending", None)
        raw_event = fields.get(EVENT_FIELD)
        try:
            event = orjson.loads(raw_event or b"")
            replay = fields.get(REPLAY_FIELD)
            topic, event_id = event["topic"], event["event_id"]
            timestamp, source = event["timestamp"], event["source"]
            entry = cls(raw_id, StreamId.of_entry(raw_id), topic, event_id, timestamp, source,
                        orjson.dumps(event["payload"]), raw_event or b"",
                        StreamId.parse(replay) if replay else None)
        except (ValueError, KeyError, TypeError) as error:
            raise Unreadable(raw_id, "undecodable", repr(error), raw_event) from None
        if not (type(topic) is str and type(event_id) is str and type(timestamp) is str
                and type(source) is str):
            raise Unreadable(raw_id, "undecodable", "a field is not a string", raw_event)
        return entry
