"""Stream upkeep: trim only settled entries; remove only consumers that are gone."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from redis.asyncio import Redis

from services.consumer.housekeeping import Housekeeping
from shared.entries import StreamId
from shared.settings import Settings
from shared.sql import queries
from shared.store import FLOOR_LOCK, PARTITIONS_LOCK, Store
from shared.stream import Stream
from tests.helpers import (
    counts,
    event,
    eventually,
    publish,
    run_until_drained,
    settle_like_a_consumer,
)


async def ids(redis: Redis, settings: Settings) -> list[bytes]:
    return [raw_id for raw_id, _ in await redis.xrange(settings.stream_key)]


async def test_trimming_keeps_every_pending_and_undelivered_entry(
        settings: Settings, stream: Stream, store: Store, redis: Redis,
        sql: psycopg.Connection[Any]) -> None:
    await stream.ensure_group()
    await publish(stream, [event(f"e{i}") for i in range(30)])
    await settle_like_a_consumer(stream, store, await stream.read_new("fast", 10, 10))
    held = await stream.read_new("slow", 10, 10)  # delivered, not settled
    everything = await ids(redis, settings)

    assert await stream.trim_settled() == 10
    assert await ids(redis, settings) == everything[10:]
    assert [raw_id for raw_id, _ in held] == everything[10:20]
    assert await stream.pending() == 20

    await run_until_drained(settings, stream, store, "rescuer", claim_idle_ms=50)
    assert counts(sql) == (30, 0, 30)


async def test_a_fully_settled_stream_trims_to_nothing_and_keeps_counting(
        settings: Settings, stream: Stream, store: Store, redis: Redis) -> None:
    await publish(stream, [event(f"e{i}") for i in range(25)])
    await run_until_drained(settings, stream, store)
    assert await stream.trim_settled() == 25
    assert await redis.xlen(settings.stream_key) == 0
    assert await stream.trim_settled() == 0
    await publish(stream, [event(f"f{i}") for i in range(5)])
    assert await stream.pending() == 5
    assert await stream.received() == 30


async def test_only_consumers_with_nothing_pending_and_long_idle_are_removed(
        settings: Settings, stream: Stream, store: Store, redis: Redis) -> None:
    await stream.ensure_group()
    await publish(stream, [event(f"e{i}") for i in range(4)])
    finished = await stream.read_new("finished", 2, 10)
    await stream.ack([raw_id for raw_id, _ in finished])
    await stream.read_new("holding", 2, 10)

    assert await stream.remove_gone_consumers(idle_ms=3_600_000) == []
    await eventually(lambda: _idle_over(redis, settings, "finished", 20), what="idle")
    assert await stream.remove_gone_consumers(idle_ms=20) == ["finished"]
    names = [c["name"] for c in await redis.xinfo_consumers(settings.stream_key,
                                                            settings.consumer_group)]
    assert names == [b"holding"]


async def _idle_over(redis: Redis, settings: Settings, name: str, ms: int) -> bool:
    consumers = await redis.xinfo_consumers(settings.stream_key, settings.consumer_group)
    return any(c["name"] == name.encode() and c["idle"] > ms for c in consumers)


async def test_the_floor_prunes_the_ledger_and_a_stalled_consumer_below_it_counts_nothing(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    await stream.ensure_group()
    await publish(stream, [event(f"e{i % 10}") for i in range(15)])
    stalled = await stream.read_new("stalled", 100, 10)  # then it stops for a long while
    await run_until_drained(settings, stream, store, "rescuer", claim_idle_ms=50)
    assert counts(sql) == (10, 5, 10)
    assert sql.execute("SELECT count(*) FROM duplicate_entries").fetchone() == (5,)

    await Housekeeping(stream, store, settings).run()
    assert sql.execute("SELECT count(*) FROM duplicate_entries").fetchone() == (0,)
    assert await redis_len(stream) == 0

    # The stalled consumer wakes up and settles what it held: long settled, and acked.
    late = await settle_like_a_consumer(stream, store, stalled)
    assert (late.unique_total, late.duplicate_total) == (0, 0)
    assert counts(sql) == (10, 5, 10)


async def redis_len(stream: Stream) -> int:
    return int(await stream.redis.xlen(stream.key))


async def test_raising_the_floor_gives_up_at_once_while_a_settling_transaction_is_stuck(
        settings: Settings, stream: Stream, store: Store, database_url: str,
        sql: psycopg.Connection[Any]) -> None:
    """A settling transaction stuck while it holds the floor's shared lock (a consumer frozen
    mid-batch) must not make raising the floor wait on it: the exclusive waiter would queue
    every other consumer's next transaction behind it, for as long as the stuck one lasts."""
    await stream.ensure_group()
    await publish(stream, [event(f"e{i}") for i in range(20)])
    first, rest = await stream.read_new("c", 10, 10), await stream.read_new("c", 10, 10)
    await settle_like_a_consumer(stream, store, first)
    with psycopg.connect(database_url) as stuck:  # a transaction, left open
        stuck.execute(queries()["share_floor"],
                      {"lock": FLOOR_LOCK, "stream": await store.stream_id(),
                       "partitions_lock": PARTITIONS_LOCK})
        raising = asyncio.create_task(store.raise_floor(StreamId.of_entry(first[-1][0])))
        # It gives up within its lock timeout, leaving the floor where it was ...
        assert await asyncio.wait_for(raising, timeout=5) is None
        assert await store.floor() == StreamId(0, 0)
        # ... and a consumer's next batch settles while the stuck transaction still holds on.
        settled = await asyncio.wait_for(settle_like_a_consumer(stream, store, rest), timeout=5)
        assert settled.unique_total == 10
    # Once it has let go, the floor rises.
    assert await store.raise_floor(StreamId.of_entry(first[-1][0])) == 0
    position = StreamId.of_entry(first[-1][0])
    assert await store.floor() == position
