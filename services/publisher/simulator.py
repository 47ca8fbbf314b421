"""The publisher's workload: realistic log events, and re-sends of them, in the order they go out.

An at-least-once source re-sends an event when it is not sure the first copy arrived, so a
duplicate here is the earlier event's serialized bytes sent again, never a re-serialization: the
ingest and the consumers must see exactly what the source sent the first time. Everything comes
from one seeded RNG, so a seed names a workload byte for byte.

The workload is a stream, made as it is read: memory stays flat whatever the number of events
(100 million as well as 20,000). Unique events are made in index order; at each position the
stream sends a re-send with the chance that the duplicates left have among the positions left
(selection sampling), so the counts are exact, known up front (`round(events * (1 -
duplicates))` unique) and the re-sends spread evenly over the run. A re-send copies one of the
last `WINDOW` originals, kept as bytes in a ring: it always goes out after its original, and
memory is O(WINDOW), not O(events).

Event ids are time-ordered (the UUIDv7 layout of RFC 9562: the 48-bit Unix millisecond
timestamp of the event's own synthetic time, the version 7, 12 seeded random bits, the RFC 4122
variant, 62 more seeded random bits), so the store's btree inserts them near each other.
"""

from __future__ import annotations

import functools
import random
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

import orjson

# Events of a run start here and move forward a few milliseconds each: a fixed start, not the
# clock, because the same seed must give the same bytes on any day.
_START = datetime(2026, 1, 1, tzinfo=UTC)
_START_MS = int(_START.timestamp() * 1000)
_MAX_STEP_MS = 20

# Originals a re-send may copy: the last WINDOW unique events, kept as bytes (about 3 MB).
WINDOW = 10_000

# Services behind each default topic; another topic gets one service named after it.
_SERVICES = {
    "auth": ("login", "token", "session"),
    "billing": ("invoice", "ledger"),
    "orders": ("cart", "checkout", "fulfilment"),
    "search": ("query", "indexer"),
    "payments": ("card", "refund", "payout"),
}
_INSTANCES = 4
_USERS = 5000
_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")
_LEVEL_WEIGHTS = (15, 70, 10, 5)
_MESSAGES = {
    "DEBUG": ("cache lookup", "connection reused", "feature flag evaluated"),
    "INFO": ("request completed", "user signed in", "record updated", "job scheduled"),
    "WARN": ("slow upstream response", "retrying upstream call", "rate limit near"),
    "ERROR": ("upstream timed out", "validation failed", "database deadlock detected"),
}
_MAX_FIELD = 255  # SPEC §2: topic, event_id and source are at most 255 characters


# Topics of a workload when none are named.
DEFAULT_TOPICS = ("auth", "billing", "orders", "search", "payments")


@dataclass(frozen=True, slots=True)
class Workload:
    """What a run sends, and what it adds up to. The events themselves are not held: each call
    of `encoded()` makes them again from the seed, the same bytes in the same order."""

    events: int
    unique_keys: int
    duplicates: int
    topics: tuple[str, ...]
    seed: int

    def encoded(self) -> Iterator[bytes]:
        """Every event's JSON bytes, in send order, made as they are read."""
        rng = random.Random(self.seed)
        topics = list(self.topics)
        ring: list[bytes] = []  # the last WINDOW originals; original i sits at i % WINDOW
        resends = self.duplicates
        for position in range(self.events):
            # Never before the first original; then a re-send with chance resends / left.
            if ring and rng.randrange(self.events - position) < resends:
                resends -= 1
                yield ring[rng.randrange(len(ring))]
                continue
            made = position - (self.duplicates - resends)
            # A copy of exactly its size: orjson's own bytes keep a buffer of 4 kB or more,
            # which WINDOW of them (or a list of every event) would hold for the whole run.
            event = memoryview(orjson.dumps(_event(rng, topics, made))).tobytes()
            if len(ring) < WINDOW:
                ring.append(event)
            else:
                ring[made % WINDOW] = event
            yield event

    def sample(self, size: int) -> list[bytes]:
        """The first `size` events the run sends (all of them when it has fewer)."""
        return list(islice(self.encoded(), size))


def workload(events: int, duplicates: float, topics: list[str], seed: int | None) -> Workload:
    """`events` events, a `duplicates` share of them re-sends of earlier ones; None seed: random
    (drawn once, so the workload reads the same each time)."""
    unique = _unique_count(events, duplicates, topics)
    return Workload(events=events, unique_keys=unique, duplicates=events - unique,
                    topics=tuple(topics), seed=secrets.randbits(64) if seed is None else seed)


def _unique_count(events: int, duplicates: float, topics: list[str]) -> int:
    if events < 1:
        raise ValueError(f"events must be at least 1, not {events}")
    if not 0 <= duplicates < 1:
        raise ValueError(f"duplicates must be a share in [0, 1), not {duplicates}")
    if not topics:
        raise ValueError("at least one topic is needed")
    bad = [t for t in topics if not 0 < len(t) <= _MAX_FIELD]
    if bad:
        raise ValueError(f"topics must be 1 to {_MAX_FIELD} characters long: {bad!r}")
    unique = round(events * (1 - duplicates))
    if unique < 1:
        raise ValueError(f"{events} events with {duplicates} duplicates leave no event to re-send")
    return unique


def _event(rng: random.Random, topics: list[str], index: int) -> dict[str, Any]:
    topic = rng.choice(topics)
    # Within the event's own step of the timeline: time rises strictly with the index.
    offset_ms = index * _MAX_STEP_MS + rng.randrange(_MAX_STEP_MS)
    return {
        "topic": topic,
        "event_id": _uuid7(_START_MS + offset_ms, rng.getrandbits(74)),
        "timestamp": _timestamp(offset_ms),
        "source": _source(rng, topic),
        "payload": _payload(rng),
    }


def _uuid7(unix_ms: int, random_bits: int) -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, version 7, 12 random bits, the
    RFC 4122 variant (10), 62 random bits. Ids sort as their times do."""
    rand_a, rand_b = random_bits >> 62, random_bits & ((1 << 62) - 1)
    value = (unix_ms & ((1 << 48) - 1)) << 80 | 7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def _timestamp(offset_ms: int) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`, `offset_ms` after the start of the run."""
    seconds, ms = divmod(offset_ms, 1000)
    return f"{_second(seconds)}.{ms:03d}Z"


@functools.lru_cache(maxsize=2)
def _second(seconds: int) -> str:
    """The date and time of a whole second of the run; about fifty events in a row share one."""
    return f"{_START + timedelta(seconds=seconds):%Y-%m-%dT%H:%M:%S}"


def _source(rng: random.Random, topic: str) -> str:
    service = rng.choice(_SERVICES.get(topic, (topic,)))
    return f"svc-{service}-{rng.randint(1, _INSTANCES)}"[:_MAX_FIELD]


def _payload(rng: random.Random) -> dict[str, Any]:
    level = rng.choices(_LEVELS, weights=_LEVEL_WEIGHTS)[0]
    return {
        "level": level,
        "message": rng.choice(_MESSAGES[level]),
        "latency_ms": round(rng.lognormvariate(3.0, 0.9), 2),
        "user": f"user-{rng.randrange(_USERS):04d}",
    }
