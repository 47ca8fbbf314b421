"""The store: every SQL statement logagg runs against PostgreSQL goes through here.

Settling a batch is one transaction of two set-based statements (see `sql/queries.sql`):
insert the first copy of each new key, then count the rest as duplicates unless they were counted
before, and move the counters. A redelivered entry, one whose earlier delivery was committed but
never acked, changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shared.events import Entry, StreamId
from shared.sql import queries


@dataclass(frozen=True, slots=True)
class Settled:
    """What one batch changed: counts per topic. Redeliveries appear in neither."""

    unique: Counter[str] = field(default_factory=Counter)
    duplicate: Counter[str] = field(default_factory=Counter)

    @property
    def unique_total(self) -> int:
        return sum(self.unique.values())

    @property
    def duplicate_total(self) -> int:
        return sum(self.duplicate.values())


@dataclass(frozen=True, slots=True)
class TopicCounts:
    unique_processed: int = 0
    duplicate_dropped: int = 0
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class StoreStats:
    topics: dict[str, TopicCounts]

    def total(self, name: str) -> int:
        return sum(getattr(counts, name) for counts in self.topics.values())


@dataclass(frozen=True, slots=True)
class StoredEvent:
    topic: str
    event_id: str
    timestamp: datetime
    source: str
    payload: dict[str, Any]
    position: StreamId

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "event_id": self.event_id,
            "timestamp": self.timestamp.astimezone(UTC),
            "source": self.source,
            "payload": self.payload,
            "received_at": self.position.received_at,
        }


class Store:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._sql = queries()

    async def settle(self, entries: Sequence[Entry]) -> Settled:
        """Store and count a batch of stream entries in one transaction, committed on return."""
        if not entries:
            return Settled()
        topics = [e.topic for e in entries]
        event_ids = [e.event_id for e in entries]
        stream_ms = [e.id.ms for e in entries]
        stream_seq = [e.id.seq for e in entries]
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(self._sql["insert_unique"], {
                "topics": topics, "event_ids": event_ids,
                "timestamps": [e.timestamp for e in entries],
                "sources": [e.source for e in entries],
                "payloads": [e.payload.decode() for e in entries],
                "stream_ms": stream_ms, "stream_seq": stream_seq,
            })
            unique_topics = [row[0] for row in await cursor.fetchall()]
            cursor = await conn.execute(self._sql["count_batch"], {
                "topics": topics, "event_ids": event_ids,
                "stream_ms": stream_ms, "stream_seq": stream_seq,
                "unique_topics": unique_topics,
            })
            deltas = await cursor.fetchall()
        return Settled(
            unique=Counter({topic: u for topic, u, _ in deltas if u}),
            duplicate=Counter({topic: d for topic, _, d in deltas if d}),
        )

    async def stats(self) -> StoreStats:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(self._sql["topic_stats"])
            rows = await cursor.fetchall()
        return StoreStats({topic: TopicCounts(u, d, dl) for topic, u, d, dl in rows})

    async def events_page(
        self, *, topic: str | None, after: StreamId | None, limit: int
    ) -> list[StoredEvent]:
        """Stored events in stream order, after the position `after`, at most `limit` of them."""
        start = after or StreamId(0, 0)
        params = {"topic": topic, "after_ms": start.ms, "after_seq": start.seq, "limit": limit}
        query = self._sql["events_page" if topic is None else "events_page_of_topic"]
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(query, params)
            rows = await cursor.fetchall()
        return [
            StoredEvent(
                topic=row["topic"], event_id=row["event_id"], timestamp=row["timestamp"],
                source=row["source"], payload=row["payload"],
                position=StreamId(row["stream_ms"], row["stream_seq"]),
            )
            for row in rows
        ]

    async def ping(self) -> None:
        async with self.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
