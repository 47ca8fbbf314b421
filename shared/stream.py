"""The Redis stream: every Redis command logagg runs goes through here.

Ingest appends with `publish`; consumers read, claim and ack. One stream, one consumer group.
Every method raises logagg's own exceptions (`BrokerUnavailable`, `GroupMissing`), never
redis-py's.

One word, one meaning: *pending* is what SPEC §3 calls pending, accepted and not settled yet:
*unacked* (delivered to a consumer, not acked; Redis's "pending entries list") plus *lag*
(not delivered yet).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared.constants import EVENT_FIELD, REPLAY_FIELD, mark_key, received_key, topics_key
from shared.entries import StreamId
from shared.exceptions import BrokerUnavailable, GroupMissing
from shared.paths import LUA_DIR

logger = logging.getLogger(__name__)

RawEntry = tuple[bytes, dict[bytes, bytes]]

LAG_COUNT_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class GroupState:
    exists: bool
    unacked: int  # delivered to a consumer, not acked
    lag: int  # not delivered yet
    oldest_unacked: StreamId | None = None
    last_delivered: StreamId | None = None

    @property
    def pending(self) -> int:
        """Accepted entries the group has not settled (SPEC §3 `pending`)."""
        return self.unacked + self.lag

    @property
    def settled_below(self) -> StreamId | None:
        """The first position the group may not have settled: every entry before it was
        delivered and acked. Redis 7.0 cannot trim "acked" entries, so this is the safe MINID:
        the oldest unacked entry if any, else the one after the last delivered. Entries
        delivered after this look only move it forward. None before any delivery."""
        if self.last_delivered is None:
            return None
        last = self.last_delivered
        return self.oldest_unacked or StreamId(last.ms, last.seq + 1)


@dataclass(frozen=True, slots=True)
class Tally:
    """What the broker knows of the counts, in one atomic look: `received` and the group."""

    received: int
    group: GroupState

    @property
    def pending(self) -> int:
        return self.group.pending


@dataclass(frozen=True, slots=True)
class LogEnds:
    """The ends of the stream's log: the id Redis generated last (every id it hands out from now
    on is above it), and the first entry still in the stream, if any."""

    last_generated: StreamId
    first_entry: StreamId | None


@dataclass(frozen=True, slots=True)
class Claimed:
    """One page of a claim: the entries taken over; the ids whose entries are no longer in the
    stream, still unacked (acking them is the caller's job); where the next page starts
    (`CLAIM_START` once the pass over the pending list is over)."""

    entries: list[RawEntry]
    deleted: list[bytes]
    next_start: bytes


CLAIM_START = b"0-0"


@dataclass(frozen=True, slots=True)
class Admission:
    """What the set of admitted topics answered a request's topics (admit_topics.lua)."""

    unseeded: bool = False  # the set was never seeded from the store: nothing was done
    held: int = 0  # topics in the set
    refused: tuple[str, ...] = ()  # the new topics, refused: the set would go past the limit


TOPICS_PER_SADD = 10_000


class Stream:
    def __init__(self, redis: Redis, *, key: str, group: str) -> None:
        self.redis = redis
        self.key = key
        self.group = group
        self._publish = redis.register_script((LUA_DIR / "publish.lua").read_text())
        self._raise_mark = redis.register_script((LUA_DIR / "raise_mark.lua").read_text())
        self._remove_gone = redis.register_script(
            (LUA_DIR / "remove_gone_consumers.lua").read_text())
        self._claim_idle = redis.register_script((LUA_DIR / "claim_idle.lua").read_text())
        self._keep_owned = redis.register_script((LUA_DIR / "keep_owned.lua").read_text())
        self._admit_topics = redis.register_script((LUA_DIR / "admit_topics.lua").read_text())

    async def ensure_group(self, after: StreamId | None = None) -> bool:
        """Create the group (and the stream) unless it exists; True when it was created.

        The group delivers the entries after the id `after`; by default it starts at the
        stream's beginning, so entries added before any consumer ran are delivered too.
        """
        start = "0" if after is None else str(after)
        with broker_errors():
            try:
                await self.redis.xgroup_create(self.key, self.group, id=start, mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" in str(error):
                    return False
                raise
        logger.info("created consumer group", extra={
            "action": "group_created", "stream": self.key, "group": self.group, "after": start})
        return True

    async def log_ends(self) -> LogEnds | None:
        """The ends of the stream's log (XINFO STREAM), or None when there is no stream."""
        with broker_errors():
            try:
                info: Any = await self.redis.xinfo_stream(self.key)
            except ResponseError as error:
                if "no such key" in str(error).lower():
                    return None
                raise
        first = info.get("first-entry")
        return LogEnds(StreamId.parse(info["last-generated-id"]),
                       StreamId.of_entry(first[0]) if first else None)

    async def holds(self, position: StreamId) -> bool:
        """Whether the entry at `position` is in the stream."""
        with broker_errors():
            return bool(await self.redis.xrange(self.key, min=str(position), max=str(position),
                                                count=1))

    async def mark(self) -> int:
        """The broker's copy of the history mark (0 when it has none)."""
        with broker_errors():
            return int(await self.redis.get(mark_key(self.key)) or 0)

    async def raise_mark(self, mark: int) -> int:
        """Raise the broker's copy of the history mark to at least `mark`; returns it."""
        with broker_errors():
            return int(await self._raise_mark(keys=[mark_key(self.key)], args=[mark]))

    async def generate_after(self, position: StreamId) -> None:
        """Make every id generated from now on greater than `position` (XSETID), so that a
        broker that lost the tail of its log never hands out a settled position again."""
        with broker_errors():
            await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "XSETID", self.key, str(position))  # redis-py has no xsetid()

    async def publish(self, events: Sequence[bytes]) -> None:
        """Append every event and count them as received, all or nothing (one Lua script)."""
        with broker_errors():
            await self._publish(keys=[self.key, received_key(self.key)],
                                args=[EVENT_FIELD, *events])

    async def admit_topics(self, topics: Collection[str], *, limit: int,
                           seeded: bool) -> Admission:
        """Admit every topic, or none if the new ones would take the set of admitted topics
        past `limit`, in one atomic step. With `seeded`, only a set seeded from the store
        (`add_topics(..., seeded=True)`) is counted on; without, the set as it is."""
        with broker_errors():
            reply = await self._admit_topics(
                keys=[topics_key(self.key)],
                args=[limit, "seeded" if seeded else "open", *topics])
        if reply[0] == 0:
            return Admission(unseeded=True)
        return Admission(held=int(reply[1]), refused=tuple(_text(topic) for topic in reply[2:]))

    async def add_topics(self, topics: Collection[str], *, seeded: bool = False) -> None:
        """Add topics to the set of admitted topics whatever its limit (topics the store
        counts); with `seeded`, then mark the set seeded from the store."""
        key, listed = topics_key(self.key), list(topics)
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(listed), TOPICS_PER_SADD):
            pipe.sadd(key, *listed[start:start + TOPICS_PER_SADD])
        if seeded:
            pipe.sadd(key, "")
        with broker_errors():
            await pipe.execute()

    async def unseed_topics(self) -> None:
        """Mark the set of admitted topics as not seeded: it is not kept up to date from now
        on (no limit), and a limit set later must seed it again from the store."""
        with broker_errors():
            await self.redis.srem(topics_key(self.key), "")

    async def read_new(self, consumer: str, count: int, block_ms: int) -> list[RawEntry]:
        """Entries never delivered to the group, now delivered to `consumer` (XREADGROUP >)."""
        return await self._read(consumer, ">", count, block_ms)

    async def read_own_unacked(self, consumer: str, count: int,
                               after: bytes = b"0") -> list[RawEntry]:
        """Entries delivered to `consumer` and not acked, after the id `after`: what it held
        when it last stopped."""
        return await self._read(consumer, after, count, None)

    async def _read(self, consumer: str, start: str | bytes, count: int,
                    block: int | None) -> list[RawEntry]:
        # RESP2 reply: [[stream, [(id, fields), ...]]], or nothing when the block timed out.
        with broker_errors():
            reply: Any = await self.redis.xreadgroup(self.group, consumer, {self.key: start},
                                                     count=count, block=block)
        if not reply:
            return []
        entries: list[RawEntry] = reply[0][1]
        return entries

    async def claim_idle(self, consumer: str, *, min_idle_ms: int, start: bytes,
                         count: int) -> Claimed:
        """Take over entries unacked for longer than `min_idle_ms` on any consumer, one page
        from `start` (a Lua script, not XAUTOCLAIM: it leaves the ids of deleted entries
        unacked, for the caller to ack once it has accounted for them)."""
        with broker_errors():
            next_start, claimed, deleted = await self._claim_idle(
                keys=[self.key], args=[self.group, consumer, min_idle_ms, start, count])
        entries = [(raw_id, _pairs(fields)) for raw_id, fields in claimed]
        return Claimed(entries=entries, deleted=list(deleted), next_start=next_start)

    async def keep_owned(self, consumer: str, ids: Sequence[bytes]) -> int:
        """Reset the idle time of those entries that `consumer` still holds, without counting
        a delivery, so that no other consumer claims them meanwhile; return how many."""
        with broker_errors():
            return int(await self._keep_owned(keys=[self.key],
                                              args=[self.group, consumer, *ids]))

    async def replay(self, letters: Sequence[tuple[str, bytes]]) -> None:
        """Append events again, each marked with the dead letter it revives, in one MULTI/EXEC.

        They were counted as received when first accepted, so `received` does not move.
        """
        pipe = self.redis.pipeline(transaction=True)
        for letter_id, event in letters:
            pipe.xadd(self.key, {EVENT_FIELD: event, REPLAY_FIELD: letter_id.encode()})
        with broker_errors():
            await pipe.execute()

    async def delivery_counts(self, consumer: str, ids: Sequence[bytes]) -> dict[bytes, int]:
        """How many times Redis delivered each entry, for those still unacked on `consumer`."""
        pipe = self.redis.pipeline(transaction=False)
        for raw_id in ids:
            pipe.xpending_range(self.key, self.group, min=raw_id, max=raw_id, count=1,
                                consumername=consumer)
        counts: dict[bytes, int] = {}
        with broker_errors():
            replies = await pipe.execute()
        for reply in replies:
            for unacked in reply:
                counts[unacked["message_id"]] = int(unacked["times_delivered"])
        return counts

    async def ack(self, ids: Sequence[bytes]) -> None:
        if ids:
            with broker_errors():
                await self.redis.xack(self.key, self.group, *ids)

    async def received(self) -> int:
        with broker_errors():
            return int(await self.redis.get(received_key(self.key)) or 0)

    async def clock_ms(self) -> int:
        """The broker's clock (TIME), in milliseconds: the one that stamps positions."""
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def group_state(self) -> GroupState:
        """The group's state in one atomic look (MULTI: XINFO GROUPS + XPENDING summary)."""
        return (await self.tally()).group

    async def tally(self) -> Tally:
        """`received` and the group's state in one atomic look (MULTI: GET, XINFO GROUPS,
        XPENDING summary): nothing can be appended or acked between them."""
        with broker_errors():
            return await self._tally()

    async def _tally(self) -> Tally:
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(received_key(self.key))
        pipe.xinfo_groups(self.key)
        pipe.xpending(self.key, self.group)
        # A MULTI whose commands fail still runs them all: the errors come back as values.
        received, groups, summary = await pipe.execute(raise_on_error=False)
        if isinstance(received, Exception):
            raise received
        count = int(received or 0)
        if isinstance(groups, Exception) or isinstance(summary, Exception) or not any(
                _text(g["name"]) == self.group for g in groups):
            # No stream (nothing was ever published), or no group yet: then nothing was
            # delivered, and every entry in the stream is waiting.
            return Tally(count, GroupState(exists=False, unacked=0,
                                           lag=int(await self.redis.xlen(self.key))))
        return Tally(count, await self._group_state(groups, summary))

    async def _group_state(self, groups: Any, summary: Any) -> GroupState:
        group = next(g for g in groups if _text(g["name"]) == self.group)
        last_delivered = StreamId.parse(group["last-delivered-id"])
        lag = group.get("lag")
        if lag is None:
            # Redis cannot tell the lag (entries deleted inside the undelivered range): count
            # it, up to LAG_COUNT_LIMIT entries, so that a long backlog does not make every
            # look read it all. Beyond that the figure is a floor, which is still not 0.
            start = f"({last_delivered}"
            lag = len(await self.redis.xrange(self.key, min=start, max="+",
                                              count=LAG_COUNT_LIMIT) or [])
        oldest = StreamId.parse(summary["min"]) if summary["pending"] else None
        return GroupState(exists=True, unacked=int(summary["pending"]), lag=int(lag),
                          oldest_unacked=oldest, last_delivered=last_delivered)

    async def pending(self) -> int:
        """Accepted entries the group has not settled (SPEC §3 `pending`)."""
        return (await self.group_state()).pending

    async def trim_settled(self) -> int:
        """Trim the entries the group has settled, and no other; return how many went."""
        boundary = (await self.group_state()).settled_below
        return 0 if boundary is None else await self.trim_below(boundary)

    async def trim_below(self, boundary: StreamId) -> int:
        with broker_errors():
            return int(await self.redis.xtrim(self.key, minid=str(boundary), approximate=False))

    async def remove_gone_consumers(self, idle_ms: int) -> list[str]:
        """Remove consumers with nothing unacked, idle for longer than `idle_ms`."""
        with broker_errors():
            try:
                removed = await self._remove_gone(keys=[self.key], args=[self.group, idle_ms])
            except ResponseError:  # no stream or no group yet
                return []
        return [_text(name) for name in removed]

    async def memory_usage(self) -> int:
        """Bytes Redis uses for the stream's key (MEMORY USAGE with its default 5 samples: a
        few of the stream's nodes, extrapolated, at a cost that does not grow with the
        stream); 0 when there is no stream."""
        with broker_errors():
            return int(await self.redis.memory_usage(self.key) or 0)

    async def eviction_policy(self) -> str | None:
        """Redis's `maxmemory-policy`; None where CONFIG is not allowed (managed services)."""
        with broker_errors():
            try:
                reply = await self.redis.config_get("maxmemory-policy")
            except ResponseError:
                return None
        policy = reply.get("maxmemory-policy")
        return None if policy is None else _text(policy)

    async def ping(self) -> None:
        with broker_errors():
            await self.redis.ping()


@contextmanager
def broker_errors() -> Iterator[None]:
    """Raise redis-py's failures as logagg's exceptions, cause kept: NOGROUP (the group is
    gone) as `GroupMissing`, anything else as `BrokerUnavailable`."""
    try:
        yield
    except ResponseError as error:
        if str(error).startswith("NOGROUP"):
            raise GroupMissing(str(error)) from error
        raise BrokerUnavailable(f"{type(error).__name__}: {error}") from error
    except RedisError as error:
        raise BrokerUnavailable(f"{type(error).__name__}: {error}") from error


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """An entry's fields as Lua returns them, [name, value, ...], as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
