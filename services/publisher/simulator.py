"""The publisher's workload: realistic log events, and re-sends of them, in the order they go out.

An at-least-once source re-sends an event when it is not sure the first copy arrived, so a
duplicate here is the earlier event's serialized bytes sent again, never a re-serialization: the
ingest and the consumers must see exactly what the source sent the first time. Everything comes
from one seeded RNG, so a seed names a workload byte for byte.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import orjson

# Events of a run start here and move forward a few milliseconds each: a fixed start, not the
# clock, because the same seed must give the same bytes on any day.
_START = datetime(2026, 1, 1, tzinfo=UTC)
_MAX_STEP_MS = 20

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
    """What a run sends: every event's JSON bytes in send order, and what they add up to."""

    encoded: tuple[bytes, ...]
    events: int
    unique_keys: int
    duplicates: int


def workload(events: int, duplicates: float, topics: list[str], seed: int | None) -> Workload:
    """`events` events, a `duplicates` share of them re-sends of earlier ones; None seed: random."""
    unique = _unique_count(events, duplicates, topics)
    rng = random.Random(seed)
    originals = [orjson.dumps(_event(rng, topics, i)) for i in range(unique)]
    order = _send_order(rng, unique, events - unique)
    return Workload(
        encoded=tuple(originals[i] for i in order),
        events=events,
        unique_keys=unique,
        duplicates=events - unique,
    )


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


def _send_order(rng: random.Random, unique: int, duplicates: int) -> list[int]:
    """Indexes into the unique events, in send order: each once, plus `duplicates` re-sends.

    Unique event i sorts at i; a re-send of j at a random point in (j, unique], so it always goes
    out after its original and the re-sends spread over the run. The sort is stable and the
    originals come first, so a key that rounds down to j still leaves the original ahead.
    """
    keys: list[tuple[float, int]] = [(i, i) for i in range(unique)]
    for _ in range(duplicates):
        j = rng.randrange(unique)
        keys.append((j + (unique - j) * (1 - rng.random()), j))
    keys.sort(key=itemgetter(0))
    return [j for _, j in keys]


def _event(rng: random.Random, topics: list[str], index: int) -> dict[str, Any]:
    topic = rng.choice(topics)
    return {
        "topic": topic,
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "timestamp": _timestamp(rng, index),
        "source": _source(rng, topic),
        "payload": _payload(rng),
    }


def _timestamp(rng: random.Random, index: int) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`, moving forward with the event's index."""
    at = _START + timedelta(milliseconds=index * _MAX_STEP_MS + rng.randrange(_MAX_STEP_MS))
    return f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond // 1000:03d}Z"


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
