"""The store: every SQL statement logagg runs against PostgreSQL goes through here.

Every method raises logagg's own exceptions (`StoreUnavailable`, `StoreConflict`,
`EntryRejected`; the policy is `shared/store_errors.py`), never psycopg's.

Settling a batch is one transaction of two set-based statements (see `sql/queries.sql`):
insert the first copy of each new key, then count the rest as duplicates unless they were counted
before, and move the counters. A redelivered entry, one whose earlier delivery was committed but
never acked, changes nothing.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection, AsyncPipeline
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shared.entries import Entry, StreamId, Unreadable
from shared.keys import PUBLIC_CHARS, ApiKey, digest
from shared.retention import KEPT, Retention
from shared.sql import queries
from shared.store_errors import translated

ORIGIN = StreamId(0, 0)  # before every position


@dataclass(frozen=True, slots=True)
class Settled:
    """What settling entries decided: the positions stored as the first copy of their key, and
    those counted as duplicates. Any other entry settled was a redelivery and counted nothing.
    `revived` counts replayed dead letters per topic (they are also unique or duplicate)."""

    unique: frozenset[StreamId] = frozenset()
    duplicate: frozenset[StreamId] = frozenset()
    revived: Counter[str] = field(default_factory=Counter)
    # The settled floor as the transaction found it (it may have risen since, never fallen).
    floor: StreamId = ORIGIN
    # Stored as new, though received before the forgotten horizon: their duplicates, if any,
    # could not be recognised (alarm `dedup_window_missed`).
    late: frozenset[StreamId] = frozenset()
    # Stored to be removed sooner than their retention asks, or kept forever for want of any
    # partition of `events` (alarm `retention_misplaced`).
    misplaced: frozenset[StreamId] = frozenset()

    def __add__(self, other: Settled) -> Settled:
        return Settled(self.unique | other.unique, self.duplicate | other.duplicate,
                       self.revived + other.revived, max(self.floor, other.floor),
                       self.late | other.late, self.misplaced | other.misplaced)

    @property
    def unique_total(self) -> int:
        return len(self.unique)

    @property
    def duplicate_total(self) -> int:
        return len(self.duplicate)

    def result(self, position: StreamId) -> str:
        if position in self.unique:
            return "unique"
        return "duplicate" if position in self.duplicate else "redelivered"


@dataclass(frozen=True, slots=True)
class Failure:
    """A stream entry that could not be settled, and why: what a dead letter is made of."""

    raw_id: bytes
    id: StreamId
    reason: str  # store_rejected | undecodable | deleted
    error: str
    topic: str | None = None
    event_id: str | None = None
    raw_event: bytes | None = None
    replay_of: StreamId | None = None
    deliveries: int = 0

    @classmethod
    def of_entry(cls, entry: Entry, error: str) -> Failure:
        # PostgreSQL text cannot hold NUL, which JSON strings can: the letter's topic and
        # event_id must be storable whatever made the event fail. `raw_event` keeps the truth.
        return cls(entry.raw_id, entry.id, "store_rejected", error, _storable(entry.topic),
                   _storable(entry.event_id), entry.raw_event, entry.replay_of)

    @classmethod
    def of_unreadable(cls, unreadable: Unreadable) -> Failure:
        return cls(unreadable.raw_id, unreadable.id, unreadable.reason, str(unreadable),
                   raw_event=unreadable.raw_event)


COUNTER_SHARDS = 16
# Advisory locks guarding each stream's settled floor: (FLOOR_LOCK, stream id), a pair of
# 32-bit keys, which never meets the migrations' single 64-bit key.
FLOOR_LOCK = 0x6C6F6766  # "logf"
# How long raising the floor may wait for settling transactions to let go of it: they take
# milliseconds, so a longer wait means one of them is stuck, and everyone would queue behind.
FLOOR_LOCK_TIMEOUT = "500ms"
# Partitions of `events` change under (PARTITIONS_LOCK, 0), exclusive; every settling
# transaction holds it shared, so it never routes an event to a partition being dropped.
PARTITIONS_LOCK = 0x6C6F6770  # "logp"
# One fold of the counters at a time per stream: (FOLD_LOCK, stream id), as for the floor.
FOLD_LOCK = 0x6C6F6763  # "logc"
# Counter shard rows one fold moves, in one transaction: about 40 ms of PostgreSQL's time.
FOLD_ROWS = 10_000


def _shard() -> int:
    """The counter rows a transaction adds to (see sql/0003_counter_shards.sql)."""
    return random.randrange(COUNTER_SHARDS)


def _columns(entries: Sequence[Entry], content: bool = True) -> dict[str, list[Any]]:
    """A batch as the arrays the settling statements unnest, one per column: keys and
    positions, and unless `content` is False, what each event holds."""
    columns: dict[str, list[Any]] = {
        "topics": [e.topic for e in entries], "event_ids": [e.event_id for e in entries],
        "stream_ms": [e.id.ms for e in entries], "stream_seq": [e.id.seq for e in entries],
    }
    if content:
        columns |= {"timestamps": [e.timestamp for e in entries],
                    "sources": [e.source for e in entries],
                    "payloads": [e.payload.decode() for e in entries]}
    return columns


@dataclass(frozen=True, slots=True)
class Generation:
    """A generation of a stream's dedup keys (sql/0008_retention.sql)."""

    id: int
    opened_ms: int | None  # None: made ahead, not taking keys yet
    closed_ms: int | None  # None: current (or ahead)
    current: bool  # taking the stream's new keys
    older: bool  # closed, its keys still looked up


@dataclass(frozen=True, slots=True)
class Generations:
    """A stream's generations, oldest first, and its forgotten horizon."""

    all: tuple[Generation, ...]
    forgotten_ms: int

    @property
    def current(self) -> Generation | None:
        return next((g for g in self.all if g.current), None)

    @property
    def ahead(self) -> Generation | None:
        return next((g for g in self.all if g.opened_ms is None and not g.current), None)

    @property
    def older(self) -> list[Generation]:
        return [g for g in self.all if g.older]


def _storable(text: str) -> str:
    return text.replace("\x00", "\ufffd")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    position: StreamId
    topic: str | None
    event_id: str | None
    event: bytes | None
    reason: str
    last_error: str
    deliveries: int
    status: str
    dead_lettered_at: datetime
    replayed_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.position), "topic": self.topic, "event_id": self.event_id,
            "reason": self.reason, "last_error": self.last_error,
            "deliveries": self.deliveries, "status": self.status,
            "dead_lettered_at": self.dead_lettered_at, "replayed_at": self.replayed_at,
            "event": None if self.event is None else self.event.decode(errors="replace"),
        }


@dataclass(frozen=True, slots=True)
class TopicCounts:
    unique_processed: int = 0
    duplicate_dropped: int = 0
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class StoreStats:
    """The stream's counters: its totals, its busiest topics (busiest first: by
    unique_processed + duplicate_dropped, then by name) and how many topics it counts."""

    totals: TopicCounts
    topics: dict[str, TopicCounts]
    topics_total: int

    def total(self, name: str) -> int:
        return int(getattr(self.totals, name))


@dataclass(frozen=True, slots=True)
class StoredEvent:
    topic: str
    event_id: str
    timestamp: datetime
    source: str
    # As PostgreSQL wrote it, passed through to the answer unparsed: exact for numbers beyond
    # 64 bits, which orjson could not write back.
    payload: orjson.Fragment
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


@dataclass(frozen=True, slots=True)
class Alarm:
    """An invariant the system could not keep (SPEC §4), standing until cleared."""

    kind: str
    message: str
    since: datetime
    last_seen: datetime

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "since": self.since}


class Store:
    """The store of one stream's rows: every call reads and writes only what came from the
    stream named `stream` (SPEC §4: deployments sharing a database never meet)."""

    def __init__(self, pool: AsyncConnectionPool, stream: str,
                 retention: Retention | None = None) -> None:
        self.pool = pool
        self.stream = stream
        self.retention = retention or Retention()
        self._sql = queries()
        self._stream_id: int | None = None

    async def stream_id(self) -> int:
        """The id of this stream's rows, made on first use and then remembered."""
        if self._stream_id is None:
            with translated():
                async with self.pool.connection() as conn:
                    cursor = await conn.execute(self._sql["stream_id"], {"name": self.stream})
                    row = await cursor.fetchone()
                    if row is None:  # made meanwhile by another process: see sql/queries.sql
                        cursor = await conn.execute(self._sql["stream_id"],
                                                    {"name": self.stream})
                        row = await cursor.fetchone()
            assert row is not None
            stream = int(row[0])
            # A new stream's first generation. Another process (or task) may be making it at
            # the same time, or hold the floor lock past FLOOR_LOCK_TIMEOUT: then try again.
            while (await self.generations(stream)).current is None:
                await self.turn_generation(None, stream)
            self._stream_id = stream
        return self._stream_id

    async def settle(self, entries: Sequence[Entry]) -> Settled:
        """Store and count a batch of stream entries in one transaction, committed on return."""
        if not entries:
            return Settled()
        stream = await self.stream_id()
        with translated():
            return await self._settle(stream, entries)

    async def _settle(self, stream: int, entries: Sequence[Entry]) -> Settled:
        async with self.pool.connection() as conn, conn.transaction(), \
                conn.pipeline() as pipeline:
            params = {"lock": FLOOR_LOCK, "stream": stream, "partitions_lock": PARTITIONS_LOCK}
            await conn.execute(self._sql["share_floor"], params)
            cursor = await conn.execute(self._sql["gate"], params)  # same round trip
            await pipeline.sync()
            row = await cursor.fetchone()
            assert row is not None  # the stream's row is made before its first settle
            floor_ms, floor_seq, generation, older, forgotten_ms, at_ms, at_seq = row
            # What the settling statements take as constants (see `gate`).
            gate = {"floor_ms": floor_ms, "floor_seq": floor_seq, "generation": generation,
                    "older": older, "live": [generation, *older], "forgotten_ms": forgotten_ms,
                    "forgotten_at_ms": at_ms, "forgotten_at_seq": at_seq}
            replays = [e for e in entries if e.replay_of is not None]
            if not replays:
                return await self._store(conn, pipeline, stream, gate, entries, [])
            live = await self._revive(conn, pipeline, stream, replays)
            # Each letter comes back once, through its first replay in this batch. A replay
            # whose letter is not dead any more was settled before: it changes nothing.
            revivals: dict[StreamId, Entry] = {}
            for entry in sorted(replays, key=lambda e: e.id):
                if entry.replay_of in live:
                    revivals.setdefault(entry.replay_of, entry)
            kept = [e for e in entries if e.replay_of is None] + list(revivals.values())
            return await self._store(conn, pipeline, stream, gate, kept,
                                     [e.topic for e in revivals.values()])

    async def raise_floor(self, position: StreamId) -> int | None:
        """Everything below `position` is settled and acked: raise the floor to it, then prune
        the duplicate ledger below it. Returns the ledger rows pruned, or None when the floor
        stayed where it was because a settling transaction held it still for longer than
        FLOOR_LOCK_TIMEOUT (a stuck consumer): the next round tries again.

        Waiting for the exclusive lock queues every new settling transaction behind it, so the
        wait is short and never open-ended; the pruning, which may take a while, runs after
        the floor's transaction, outside the lock (no settling transaction reads the ledger
        below the floor)."""
        params = {"lock": FLOOR_LOCK, "stream": await self.stream_id(), "ms": position.ms,
                  "seq": position.seq, "lock_timeout": FLOOR_LOCK_TIMEOUT}
        with translated():
            if not await self._raise_floor(params):
                return None
            async with self.pool.connection() as conn:
                cursor = await conn.execute(self._sql["prune_ledger"], params)
                return cursor.rowcount

    async def _raise_floor(self, params: dict[str, Any]) -> bool:
        return await self._exclusively("lock_floor", params, self._running("raise_floor"))

    async def _exclusively(self, lock: str, params: dict[str, Any],
                           work: Callable[[AsyncConnection[Any], dict[str, Any]],
                                          Awaitable[None]]) -> bool:
        """Do `work` in one transaction under the exclusive advisory lock the statement `lock`
        takes; False, with nothing done, when it could not be had within FLOOR_LOCK_TIMEOUT
        (settling transactions held it)."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute(self._sql["floor_lock_timeout"],
                                   {"lock_timeout": FLOOR_LOCK_TIMEOUT})
                await conn.execute(self._sql[lock], params)
                await work(conn, params)
        except psycopg.errors.LockNotAvailable:
            return False
        return True

    def _running(self, statement: str) -> Callable[[AsyncConnection[Any], dict[str, Any]],
                                                   Awaitable[None]]:
        """Work for `_exclusively`: one named statement, with the lock's parameters."""
        async def run(conn: AsyncConnection[Any], params: dict[str, Any]) -> None:
            await conn.execute(self._sql[statement], params)
        return run

    async def generations(self, stream: int | None = None) -> Generations:
        """This stream's generations of dedup keys, oldest first."""
        if stream is None:
            stream = await self.stream_id()
        with translated():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(self._sql["generations"], {"stream": stream})
                rows = await cursor.fetchall()
        return Generations(tuple(Generation(*row[:5]) for row in rows),
                           rows[0][5] if rows else 0)

    async def turn_generation(self, now_ms: int | None, stream: int | None = None) -> bool:
        """Open a new generation of dedup keys (made ahead first, outside the lock), the
        current one becoming older; False when settling transactions held the floor lock."""
        if stream is None:
            stream = await self.stream_id()
        ahead = (await self.generations(stream)).ahead
        if ahead is None:
            made = await self._one("new_generation", {"stream": stream})
            assert made is not None
            next_id = int(made[0])
        else:
            next_id = ahead.id
        params = {"lock": FLOOR_LOCK, "stream": stream, "next": next_id, "now_ms": now_ms}
        with translated():
            return await self._exclusively("lock_floor", params,
                                           self._running("turn_generation"))

    async def forget_generation(self, generation: int, forgotten_ms: int) -> bool:
        """Stop remembering an older generation's keys and drop them (O(1): one partition);
        False when settling transactions held the floor lock."""
        params = {"lock": FLOOR_LOCK, "stream": await self.stream_id(),
                  "generation": generation, "forgotten_ms": forgotten_ms}
        with translated():
            return await self._exclusively("lock_floor", params,
                                           self._running("forget_generation"))

    async def expire_dead_letters(self, before_ms: int, rows: int = FOLD_ROWS) -> int:
        """Remove up to `rows` dead letters of events received before `before_ms` (and below
        the floor and the forgotten horizon); return how many."""
        params = {"stream": await self.stream_id(), "before_ms": before_ms, "rows": rows}
        with translated():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(self._sql["expire_dead_letters"], params)
                return cursor.rowcount

    async def event_partitions(self) -> list[tuple[int, int]]:
        """The finite partitions of `events`, as (lower_ms, upper_ms), oldest first."""
        with translated():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(self._sql["event_partitions"])
                return [(int(lower), int(upper)) for lower, upper in await cursor.fetchall()]

    async def change_event_partitions(self, add: Sequence[tuple[int, int]],
                                      drop: Sequence[int]) -> bool:
        """Add partitions (lower_ms, upper_ms) and drop those starting at `drop`, in one
        transaction; False when settling transactions held the partitions lock."""
        if not add and not drop:
            return True

        async def change(conn: AsyncConnection[Any], _: dict[str, Any]) -> None:
            # The list read again under the lock: another consumer may have changed it.
            cursor = await conn.execute(self._sql["event_partitions"])
            existing = {int(lower) for lower, _ in await cursor.fetchall()}
            for lower, upper in add:
                if lower not in existing:
                    await conn.execute(self._sql["add_event_partition"],
                                       {"lower_ms": lower, "upper_ms": upper})
            for lower in drop:
                await conn.execute(self._sql["drop_event_partition"], {"lower_ms": lower})

        with translated():
            return await self._exclusively("lock_partitions",
                                           {"partitions_lock": PARTITIONS_LOCK}, change)

    async def floor(self) -> StreamId:
        """The settled floor: every position of this stream below it was settled and acked."""
        row = await self._one("floor", {"stream": await self.stream_id()})
        return ORIGIN if row is None else StreamId(*row)

    async def mark(self) -> int:
        """The history mark the broker acknowledged last (see services/consumer/invariants.py)."""
        row = await self._one("mark", {"stream": await self.stream_id()})
        return int(row[0]) if row else 0

    async def raise_mark(self, mark: int) -> None:
        stream = await self.stream_id()
        with translated():
            async with self.pool.connection() as conn:
                await conn.execute(self._sql["raise_mark"], {"stream": stream, "mark": mark})

    async def settled_high(self) -> StreamId | None:
        """The highest position this store holds as settled (stored or counted as a
        duplicate), or None when nothing was."""
        row = await self._one("settled_high", {"stream": await self.stream_id()})
        return None if row is None else StreamId(*row)

    async def raise_alarm(self, kind: str, message: str) -> bool:
        """Raise an alarm, or refresh the one of that kind standing; True when it is new."""
        row = await self._one("raise_alarm", {"stream": await self.stream_id(), "kind": kind,
                                              "message": message})
        return bool(row and row[0])

    async def alarms(self) -> list[Alarm]:
        # The stream's id first: with a pool of one, asking for it inside the block would wait
        # for the connection the block holds.
        stream = await self.stream_id()
        with translated():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(self._sql["alarms"], {"stream": stream})
                rows = await cursor.fetchall()
        return [Alarm(*row) for row in rows]

    async def clear_alarm(self, kind: str) -> bool:
        """Clear a standing alarm; False when none of that kind stood."""
        stream = await self.stream_id()
        with translated():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(self._sql["clear_alarm"],
                                            {"stream": stream, "kind": kind})
                return cursor.rowcount > 0

    async def create_key(self, key: str, *, name: str, scopes: Sequence[str],
                         topics: Sequence[str] | None = None, source: str | None = None,
                         rate: float | None = None, burst: float | None = None
                         ) -> tuple[ApiKey, bool]:
        """Store the digest of `key` under `name`; `(the key, True)` when it is new, or the key
        already stored with that digest and False."""
        row = await self._one("create_key", {
            "name": name, "prefix": key[:PUBLIC_CHARS], "digest": digest(key),
            "scopes": list(scopes), "topics": None if topics is None else list(topics),
            "source": source, "rate": rate, "burst": burst})
        if row is not None:
            return ApiKey.of_row(row), True
        existing = await self._one("key_by_digest", {"digest": digest(key)})
        assert existing is not None  # digests are never deleted
        return ApiKey.of_row(existing), False

    async def keys(self, *, live_only: bool = False) -> list[ApiKey]:
        with translated():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(self._sql["live_keys" if live_only else "all_keys"])
                return [ApiKey.of_row(row) for row in await cursor.fetchall()]

    async def keys_version(self) -> int:
        """A number every change to the keys raises (see `keys_version` in sql/queries.sql)."""
        row = await self._one("keys_version", {})
        return int(row[0]) if row else 0

    async def revoke_key(self, key_id: int) -> bool:
        """Revoke a key; False when no live key has that id."""
        return await self._one("revoke_key", {"id": key_id}) is not None

    async def _one(self, query: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        with translated():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(self._sql[query], params)
                return await cursor.fetchone()

    async def _revive(self, conn: AsyncConnection[Any], pipeline: AsyncPipeline, stream: int,
                      replays: list[Entry]) -> set[StreamId]:
        letters = [e.replay_of for e in replays if e.replay_of is not None]
        cursor = await conn.execute(self._sql["revive_dead_letters"], {
            "stream": stream, "replay_ms": [p.ms for p in letters],
            "replay_seq": [p.seq for p in letters]})
        await pipeline.sync()
        return {StreamId(ms, seq) for ms, seq in await cursor.fetchall()}

    async def _store(self, conn: AsyncConnection[Any], pipeline: AsyncPipeline, stream: int,
                     gate: dict[str, Any], entries: Sequence[Entry], revived: list[str]
                     ) -> Settled:
        expires = [self.retention.expires_ms(e.topic, e.id.ms) for e in entries]
        cursor = await conn.execute(self._sql["insert_unique"], {
            "stream": stream, **gate, **_columns(entries), "expires": expires})
        # A Sync before each wait for results: PostgreSQL arms the session's idle timeout only
        # after a Sync, so a consumer frozen here cannot hold its locks for longer than that.
        await pipeline.sync()
        inserted = await cursor.fetchall()
        unique = frozenset(StreamId(ms, seq) for _, ms, seq, _, _ in inserted)
        late = frozenset(StreamId(ms, seq) for _, ms, seq, was_late, _ in inserted if was_late)
        asked = {e.id: expiry for e, expiry in zip(entries, expires, strict=True)}
        # Placed later than asked is only an event settled after it expired, kept until the
        # oldest partition goes; placed earlier, or kept for want of any partition, is not.
        misplaced = frozenset(StreamId(ms, seq) for _, ms, seq, _, placed in inserted
                              if placed < asked[StreamId(ms, seq)]
                              or (placed == KEPT and asked[StreamId(ms, seq)] != KEPT))
        # Only the entries that were not just stored can be duplicates (or redeliveries, or
        # the first accepted copy of a key stored under a later one).
        rest = [e for e in entries if e.id not in unique]
        cursor = await conn.execute(self._sql["count_batch"], {
            "stream": stream, **gate, **_columns(rest, content=False),
            "unique_topics": [row[0] for row in inserted], "revived_topics": revived,
            "shard": _shard(),
        })
        await pipeline.sync()
        decided = await cursor.fetchall()
        moves = [(StreamId(ms, seq), StreamId(held_ms, held_seq))
                 for kind, ms, seq, held_ms, held_seq in decided if kind == "moved"]
        if moves:
            await self._move_events(conn, pipeline, stream, rest, moves)
        return Settled(
            unique=unique,
            duplicate=frozenset(StreamId(ms, seq) for kind, ms, seq, _, _ in decided
                                if kind == "duplicate"),
            revived=Counter(revived),
            floor=StreamId(gate["floor_ms"], gate["floor_seq"]),
            late=late,
            misplaced=misplaced,
        )

    async def _move_events(self, conn: AsyncConnection[Any], pipeline: AsyncPipeline,
                           stream: int, entries: Sequence[Entry],
                           moves: list[tuple[StreamId, StreamId]]) -> None:
        """The stored events of keys moved to an earlier copy take that copy's content."""
        by_position = {e.id: e for e in entries}
        copies = [by_position[to] for to, _ in moves]
        await conn.execute(self._sql["move_events"], {
            "stream": stream, **_columns(copies),
            "held_ms": [held.ms for _, held in moves],
            "held_seq": [held.seq for _, held in moves]})
        await pipeline.sync()

    async def dead_letter(self, failures: Sequence[Failure]) -> int:
        """Give up on entries: write and count their dead letters, once. Returns how many new."""
        if not failures:
            return 0
        stream = await self.stream_id()
        with translated():
            return await self._dead_letter(stream, failures)

    async def _dead_letter(self, stream: int, failures: Sequence[Failure]) -> int:
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(self._sql["dead_letter"], {
                "stream": stream, "stream_ms": [f.id.ms for f in failures],
                "stream_seq": [f.id.seq for f in failures],
                "topics": [f.topic for f in failures],
                "event_ids": [f.event_id for f in failures],
                "events": [f.raw_event for f in failures],
                "reasons": [f.reason for f in failures],
                "errors": [f.error for f in failures],
                "deliveries": [f.deliveries for f in failures],
                "replay_ms": [f.replay_of.ms if f.replay_of else None for f in failures],
                "replay_seq": [f.replay_of.seq if f.replay_of else None for f in failures],
                "shard": _shard(),
            })
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def dead_letters(self, *, after: StreamId | None = None, status: str | None = None,
                           limit: int = 100) -> list[DeadLetter]:
        start = after or StreamId(0, 0)
        return await self._letters("dead_letters", {
            "stream": await self.stream_id(), "after_ms": start.ms, "after_seq": start.seq,
            "status": status, "limit": limit})

    async def dead_letters_at(self, positions: Sequence[StreamId]) -> list[DeadLetter]:
        return await self._letters("dead_letters_by_position", {
            "stream": await self.stream_id(), "stream_ms": [p.ms for p in positions],
            "stream_seq": [p.seq for p in positions]})

    async def _letters(self, query: str, params: dict[str, Any]) -> list[DeadLetter]:
        with translated():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(self._sql[query], params)
                rows = await cursor.fetchall()
        return [DeadLetter(StreamId(ms, seq), *rest) for ms, seq, *rest in rows]

    async def stats(self, top: int | None = None) -> StoreStats:
        """The counters, read at one moment: the totals, the `top` busiest topics (every topic
        when None) and how many topics there are. What it reads grows with `top` and with the
        counts not folded yet, not with the number of topics (see sql/queries.sql)."""
        stream = await self.stream_id()
        with translated():
            async with self.pool.connection() as conn, conn.transaction(), conn.pipeline():
                await conn.execute(self._sql["without_jit"])
                cursor = await conn.execute(self._sql["stats"], {"stream": stream, "top": top})
                rows = await cursor.fetchall()
        *listed, (_, unique, duplicate, dead, topics) = rows
        return StoreStats(
            totals=TopicCounts(unique, duplicate, dead),
            topics={topic: TopicCounts(u, d, dl) for topic, u, d, dl, _ in listed},
            topics_total=topics)

    async def fold_counters(self, rows: int = FOLD_ROWS) -> int | None:
        """Fold up to `rows` counter shard rows into the topics' totals, in one transaction
        (sql/0007_counter_totals.sql); return how many, or None when another fold of this
        stream is under way."""
        params = {"lock": FOLD_LOCK, "stream": await self.stream_id(), "rows": rows}
        with translated():
            async with self.pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(self._sql["fold_lock"], params)
                locked = await cursor.fetchone()
                if not (locked and locked[0]):
                    return None
                cursor = await conn.execute(self._sql["fold_counters"], params)
                moved = await cursor.fetchone()
        return int(moved[0]) if moved else 0

    async def topics(self) -> list[str]:
        """Every topic this stream counts."""
        return await self._topics("stream_topics", {"stream": await self.stream_id()})

    async def counted_topics(self, candidates: Sequence[str]) -> set[str]:
        """Those of `candidates` that this stream counts."""
        return set(await self._topics("counted_topics", {
            "stream": await self.stream_id(), "topics": list(candidates)}))

    async def _topics(self, query: str, params: dict[str, Any]) -> list[str]:
        with translated():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(self._sql[query], params)
                return [topic for topic, in await cursor.fetchall()]

    async def events_page(
        self, *, topic: str | None, after: StreamId | None, below: StreamId, limit: int
    ) -> list[StoredEvent]:
        """Stored events in stream order, after the position `after` and below `below`, at
        most `limit` of them."""
        start = after or ORIGIN
        params = {"stream": await self.stream_id(), "topic": topic, "after_ms": start.ms,
                  "after_seq": start.seq, "below_ms": below.ms, "below_seq": below.seq,
                  "limit": limit}
        query = self._sql["events_page" if topic is None else "events_page_of_topic"]
        with translated():
            async with self.pool.connection() as conn, \
                    conn.cursor(row_factory=dict_row) as cursor:
                await cursor.execute(query, params)
                rows = await cursor.fetchall()
        return [
            StoredEvent(
                topic=row["topic"], event_id=row["event_id"], timestamp=row["timestamp"],
                source=row["source"], payload=orjson.Fragment(row["payload"]),
                position=StreamId(row["stream_ms"], row["stream_seq"]),
            )
            for row in rows
        ]

    async def tables_answer(self) -> None:
        """Read one row of every table settling touches: StoreUnavailable if one is missing."""
        await self._one("tables_answer", {})

    async def ping(self) -> None:
        with translated():
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
