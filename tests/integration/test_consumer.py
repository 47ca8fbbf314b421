"""The consumer against real Redis and PostgreSQL: dedup under concurrency, redelivery after a
commit that was never acked, takeover of a dead consumer's entries, and stopping cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
import pytest

from services.consumer.loop import Consumer, decode
from shared.entries import Entry, StreamId
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import event, eventually


async def publish(stream: Stream, events: list[dict[str, Any]], batch: int = 100) -> None:
    for start in range(0, len(events), batch):
        await stream.publish([orjson.dumps(e) for e in events[start:start + batch]])


def with_duplicates(unique: int, duplicates: int, topics: int = 3,
                    seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    originals = [event(f"e{i}", topic=f"topic-{i % topics}") for i in range(unique)]
    copies = [rng.choice(originals) for _ in range(duplicates)]
    mixed = originals + copies
    rng.shuffle(mixed)
    return mixed


@asynccontextmanager
async def running(*consumers: Consumer) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def consumer(settings: Settings, stream: Stream, store: Store, name: str,
             **changes: Any) -> Consumer:
    return Consumer(dataclasses.replace(settings, consumer_name=name, **changes), stream, store)


async def drained(stream: Stream) -> bool:
    return await stream.pending() == 0


def counts(sql: psycopg.Connection[Any]) -> tuple[int, int, int]:
    """(unique_processed, duplicate_dropped, rows in events)."""
    row = sql.execute("SELECT coalesce(sum(unique_processed), 0), "
                      "coalesce(sum(duplicate_dropped), 0) FROM topic_stats").fetchone()
    rows = sql.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None and rows is not None
    return int(row[0]), int(row[1]), int(rows[0])


async def test_concurrent_transactions_with_the_same_keys_store_one_copy_each(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    # Four "consumers" settle batches that share most of their keys, all at once, many times.
    position = 0
    for round_ in range(20):
        keys = [f"r{round_}-k{i}" for i in range(30)]
        batches = []
        for _ in range(4):
            batch = []
            for key in random.sample(keys, 25):
                position += 1
                batch.append(Entry(b"", StreamId(position, 0), "auth", key,
                                   "2026-11-25T10:00:00Z", "s", b"{}"))
            batches.append(batch)
        await asyncio.gather(*(store.settle(b) for b in batches))
    unique, duplicate, rows = counts(sql)
    distinct = int(sql.execute("SELECT count(DISTINCT event_id) FROM events").fetchone()[0])  # type: ignore[index]
    assert rows == distinct == unique
    assert unique + duplicate == position == 20 * 4 * 25


async def test_three_consumers_store_each_key_once_and_count_every_duplicate(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    events = with_duplicates(unique=1400, duplicates=600)
    await publish(stream, events)
    trio = [consumer(settings, stream, store, f"c{i}") for i in range(3)]
    async with running(*trio):
        await eventually(lambda: drained(stream), what="stream drained")
    assert counts(sql) == (1400, 600, 1400)
    assert await stream.received() == 2000
    assert sum(c.totals.unique for c in trio) == 1400
    assert all(c.totals.batches > 0 for c in trio), "every consumer took part"
    per_topic = dict(sql.execute("SELECT topic, sum(unique_processed + duplicate_dropped) "
                                 "FROM topic_stats GROUP BY topic").fetchall())
    expected: dict[str, int] = {}
    for e in events:
        expected[e["topic"]] = expected.get(e["topic"], 0) + 1
    assert per_topic == expected


async def test_an_entry_committed_but_never_acked_changes_no_counter_when_redelivered(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    await stream.ensure_group()
    events = with_duplicates(unique=60, duplicates=40)
    await publish(stream, events)
    # The doomed consumer commits its batch, then dies before XACK.
    doomed = await stream.read_new("doomed", 100, 10)
    await store.settle(decode(doomed)[0])
    before = counts(sql)
    assert before == (60, 40, 60)
    assert await stream.pending() == 100

    rescuer = consumer(settings, stream, store, "rescuer")
    async with running(rescuer):
        await eventually(lambda: drained(stream), what="claimed entries settled")
    assert counts(sql) == before
    assert rescuer.totals.claimed == 100
    assert rescuer.totals.redelivered == 100
    assert (rescuer.totals.unique, rescuer.totals.duplicate) == (0, 0)


async def test_the_same_entries_settled_twice_at_once_count_once(
        stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    # A stuck consumer and the one that claimed its entries may settle them concurrently.
    await stream.ensure_group()
    await publish(stream, with_duplicates(unique=80, duplicates=20))
    entries, _ = decode(await stream.read_new("slow", 100, 10))
    first, second = await asyncio.gather(store.settle(entries), store.settle(entries))
    assert first.unique_total + second.unique_total == 80
    assert first.duplicate_total + second.duplicate_total == 20
    assert counts(sql) == (80, 20, 80)


async def test_xautoclaim_takes_over_the_entries_of_a_consumer_that_died_before_commit(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    await stream.ensure_group()
    await publish(stream, with_duplicates(unique=30, duplicates=10))
    assert len(await stream.read_new("dead", 100, 10)) == 40  # delivered, never settled

    patient = consumer(settings, stream, store, "patient", claim_idle_ms=60_000)
    async with running(patient):
        await asyncio.sleep(0.3)  # not a synchronisation: a window in which nothing may happen
    assert patient.totals.claimed == 0, "entries idle less than CLAIM_IDLE_MS stay put"

    rescuer = consumer(settings, stream, store, "rescuer", claim_idle_ms=100)
    async with running(rescuer):
        await eventually(lambda: drained(stream), what="dead consumer's entries settled")
    assert rescuer.totals.claimed == 40
    assert counts(sql) == (30, 10, 30)


async def test_a_restarted_consumer_settles_its_own_pending_entries_first(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    await stream.ensure_group()
    await publish(stream, [event(f"e{i}") for i in range(120)])
    await stream.read_new("worker-1", 120, 10)  # then the process died
    # More entries than one batch: resuming pages through all of them.
    again = consumer(settings, stream, store, "worker-1", claim_idle_ms=600_000, batch_size=50)
    async with running(again):
        await eventually(lambda: drained(stream), what="own pending entries settled")
    assert again.totals.claimed == 0
    assert counts(sql) == (120, 0, 120)


async def test_a_stopped_consumer_leaves_nothing_unacked(
        settings: Settings, stream: Stream, store: Store, redis: Any) -> None:
    await publish(stream, [event(f"e{i}") for i in range(2000)])
    worker = consumer(settings, stream, store, "worker", batch_size=20)
    async with running(worker):
        await eventually(lambda: asyncio.sleep(0, worker.totals.batches >= 3),
                         what="a few batches settled")
    summary = await redis.xpending(settings.stream_key, settings.consumer_group)
    assert summary["pending"] == 0
    assert 0 < worker.totals.unique < 2000


async def test_the_group_is_created_once_when_many_consumers_start_together(
        settings: Settings, stream: Stream, redis: Any) -> None:
    await asyncio.gather(*(stream.ensure_group() for _ in range(10)))
    groups = await redis.xinfo_groups(settings.stream_key)
    assert [g["name"] for g in groups] == [settings.consumer_group.encode()]


async def test_every_decision_is_traceable_at_debug(
        settings: Settings, stream: Stream, store: Store,
        caplog: pytest.LogCaptureFixture) -> None:
    await stream.ensure_group()
    await publish(stream, [event("k1"), event("k1"), event("k2", topic="billing")])
    doomed = await stream.read_new("doomed", 10, 10)
    await store.settle(decode(doomed)[0])  # committed, never acked: all three come back
    caplog.set_level(logging.DEBUG, logger="services.consumer.loop")
    async with running(consumer(settings, stream, store, "rescuer", claim_idle_ms=50)):
        await eventually(lambda: drained(stream), what="redelivered and settled")
    await publish(stream, [event("k1"), event("k3")])
    async with running(consumer(settings, stream, store, "worker")):
        await eventually(lambda: drained(stream), what="settled")
    traced = [(r.event_id, r.result) for r in caplog.records  # type: ignore[attr-defined]
              if getattr(r, "action", None) == "entry_settled"]
    assert traced == [("k1", "redelivered"), ("k1", "redelivered"), ("k2", "redelivered"),
                      ("k1", "duplicate"), ("k3", "unique")]
