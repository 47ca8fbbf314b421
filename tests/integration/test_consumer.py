"""The consumer against real Redis and PostgreSQL: dedup under concurrency, redelivery after a
commit that was never acked, takeover of a dead consumer's entries, and stopping cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import Any

import psycopg
import pytest
from redis.asyncio import Redis

from shared.entries import Entry, StreamId
from shared.settings import Settings
from shared.store import Failure, Settled, Store
from shared.stream import Stream
from tests.helpers import (
    consumer,
    counts,
    drained,
    event,
    eventually,
    logged,
    publish,
    run_until_drained,
    running,
    settle_like_a_consumer,
    waiting_for_locks,
    with_duplicates,
)


def entry(position: int, key: str) -> Entry:
    return Entry(b"", StreamId(position, 0), "auth", key, "2026-11-25T10:00:00Z", "s", b"{}")


async def test_concurrent_transactions_count_each_key_once_and_each_entry_once(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    # Four "consumers" settle batches at once, twenty times over. The batches share keys (so
    # they race to store the first copy) and share entries (as a stuck consumer and the one
    # that claimed its entries do), and a batch may hold two copies of a key.
    rng = random.Random(11)
    key_of: dict[StreamId, str] = {}  # every entry settled, and its key
    results: list[Settled] = []
    for round_ in range(20):
        keys = [f"r{round_}-k{i}" for i in range(30)]
        pool = [entry(round_ * 100 + i, rng.choice(keys)) for i in range(40)]
        batches = [sorted(rng.sample(pool, 25), key=lambda e: e.id) for _ in range(4)]
        key_of.update((e.id, e.event_id) for batch in batches for e in batch)
        results += await asyncio.gather(*(store.settle(b) for b in batches))

    settled = set(key_of)
    keys_settled = set(key_of.values())
    stats = await store.stats()
    # The counters: one unique per key, one duplicate per other entry of the key.
    assert stats.total("unique_processed") == len(keys_settled)
    assert stats.total("duplicate_dropped") == len(settled) - len(keys_settled)
    # What the settling calls reported: one first copy per key, each duplicate once (a call
    # whose copy displaced a later one reports that one as its duplicate).
    unique = [p for r in results for p in r.unique]
    duplicate = [p for r in results for p in r.duplicate]
    assert len(unique) == len(set(unique)) == len(keys_settled)
    assert len(duplicate) == len(set(duplicate)) == len(settled) - len(keys_settled)
    assert set(unique) | set(duplicate) <= settled
    # And the rows: the stored copy of each key is its earliest entry (SPEC §2: the first
    # accepted copy, whichever call committed first), the ledger holds every other entry.
    stored = {StreamId(ms, seq): key for key, ms, seq in sql.execute(
        "SELECT event_id, stream_ms, stream_seq FROM events").fetchall()}
    earliest = {key: min(p for p in settled if key_of[p] == key) for key in keys_settled}
    assert stored == {p: key for key, p in earliest.items()}
    ledger = {StreamId(ms, seq) for ms, seq in sql.execute(
        "SELECT stream_ms, stream_seq FROM duplicate_entries").fetchall()}
    assert ledger == settled - set(stored)


async def test_a_copy_judged_while_another_transaction_moves_the_row_below_it_is_counted(
        store: Store, sql: psycopg.Connection[Any], database_url: str) -> None:
    # Three copies of one key, first < second < third. The third is stored; then the first and
    # the second are settled at once, and the first moves the row while the second's snapshot
    # still sees the third stored. To make that certain, a third connection holds the row's
    # lock until both wait for it, the first in line: it moves the row and commits; the second
    # then reads the row at its new version, below its copy. Judged by its snapshot instead,
    # its copy was neither moved to (the row is below it) nor a duplicate (the third is above
    # it), and it was counted nowhere.
    first, second, third = (entry(position, "k") for position in (1, 2, 3))
    assert (await store.settle([third])).unique == {third.id}
    async with await psycopg.AsyncConnection.connect(database_url) as holder:
        await holder.execute("SELECT 1 FROM events WHERE event_id = 'k' FOR UPDATE")
        moving = asyncio.create_task(store.settle([first]))
        await eventually(lambda: waiting_for_locks(sql, 1), what="the first copy waits")
        judging = asyncio.create_task(store.settle([second]))
        await eventually(lambda: waiting_for_locks(sql, 2), what="the second copy waits")
        await holder.rollback()
        moved, judged = await moving, await judging
    assert (moved.unique, moved.duplicate) == (frozenset(), {third.id})
    assert (judged.unique, judged.duplicate) == (frozenset(), {second.id})
    stats = await store.stats()
    assert (stats.total("unique_processed"), stats.total("duplicate_dropped")) == (1, 2)
    assert sql.execute("SELECT stream_ms FROM events").fetchall() == [(1,)]
    assert sorted(sql.execute("SELECT stream_ms FROM duplicate_entries").fetchall()) == [
        (2,), (3,)]


async def test_a_late_delivery_of_a_dead_letter_does_not_hide_a_live_first_copy(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    # Three copies of one key: the first was given up on (a dead letter), the third is stored.
    # The first comes back (its consumer died after writing the letter, before the ack) in one
    # batch with the second: the second is the first accepted copy, so the row moves to it and
    # the third is the duplicate; the first counts nowhere again. When the batch's first copy
    # was taken before leaving dead letters out, the second was neither stored nor counted.
    first, second, third = (entry(position, "k") for position in (1, 2, 3))
    assert await store.dead_letter([Failure(b"1-0", first.id, "store_rejected", "test",
                                            "auth", "k", b"{}")]) == 1
    assert (await store.settle([third])).unique == {third.id}
    settled = await store.settle([first, second])
    assert (settled.unique, settled.duplicate) == (frozenset(), {third.id})
    stats = await store.stats()
    assert (stats.total("unique_processed"), stats.total("duplicate_dropped"),
            stats.total("dead_lettered")) == (1, 1, 1)
    assert sql.execute("SELECT stream_ms FROM events").fetchall() == [(2,)]


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
                                 "FROM topic_counts GROUP BY topic").fetchall())
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
    await settle_like_a_consumer(stream, store, doomed, ack=False)
    before = counts(sql)
    assert before == (60, 40, 60)
    assert await stream.pending() == 100

    rescuer = await run_until_drained(settings, stream, store, "rescuer")
    assert counts(sql) == before
    assert rescuer.totals.claimed == 100
    assert rescuer.totals.redelivered == 100
    assert (rescuer.totals.unique, rescuer.totals.duplicate) == (0, 0)


async def test_the_same_entries_settled_twice_at_once_count_once(
        stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    # A stuck consumer and the one that claimed its entries may settle them concurrently.
    await stream.ensure_group()
    await publish(stream, with_duplicates(unique=80, duplicates=20))
    held = await stream.read_new("slow", 100, 10)
    first, second = await asyncio.gather(settle_like_a_consumer(stream, store, held),
                                         settle_like_a_consumer(stream, store, held))
    assert first.unique_total + second.unique_total == 80
    assert first.duplicate_total + second.duplicate_total == 20
    assert counts(sql) == (80, 20, 80)
    assert await stream.pending() == 0


async def pending_idle_ms(redis: Redis, settings: Settings) -> dict[bytes, tuple[bytes, int]]:
    """Each unacked entry: (the consumer holding it, how long it has been idle)."""
    rows = await redis.xpending_range(settings.stream_key, settings.consumer_group,
                                      min="-", max="+", count=1000)
    return {r["message_id"]: (r["consumer"], r["time_since_delivered"]) for r in rows}


async def test_xautoclaim_takes_over_the_entries_of_a_consumer_that_died_before_commit(
        settings: Settings, stream: Stream, store: Store, redis: Redis,
        sql: psycopg.Connection[Any]) -> None:
    await stream.ensure_group()
    await publish(stream, with_duplicates(unique=30, duplicates=10))
    held = [raw_id for raw_id, _ in await stream.read_new("dead", 100, 10)]
    assert len(held) == 40  # delivered, never settled
    # One more entry, for the patient consumer to read: a consumer scans for idle entries
    # before it reads (and its first scan is due at once), so once it has settled this one
    # it has looked at the dead consumer's entries.
    await publish(stream, [event("marker", topic="marker")])

    async def marker_settled() -> bool:
        return "marker" in (await store.stats()).topics

    patient = consumer(settings, stream, store, "patient", claim_idle_ms=60_000)
    async with running(patient):
        await eventually(marker_settled, what="the patient consumer scanned, then read")
    assert patient.totals.claimed == 0, "entries idle less than CLAIM_IDLE_MS stay put"
    idle = await pending_idle_ms(redis, settings)
    assert sorted(idle) == sorted(held)
    assert all(owner == b"dead" and ms < 60_000 for owner, ms in idle.values())

    # The dead consumer's entries are now idle for a minute (XCLAIM ... IDLE, JUSTID so that
    # the delivery count does not move): a consumer with the same CLAIM_IDLE_MS takes them.
    await redis.xclaim(settings.stream_key, settings.consumer_group, "dead", 0, held,
                       idle=60_000, justid=True)
    rescuer = await run_until_drained(settings, stream, store, "rescuer", claim_idle_ms=60_000)
    assert rescuer.totals.claimed == 40
    assert counts(sql) == (31, 10, 31)


async def test_a_restarted_consumer_settles_its_own_pending_entries_first(
        settings: Settings, stream: Stream, store: Store, redis: Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    await stream.ensure_group()
    await publish(stream, [event(f"own{i}") for i in range(120)])
    own = [raw_id.decode() for raw_id, _ in await stream.read_new("worker-1", 120, 10)]
    # Then the process died, and more events came in while it was away.
    await publish(stream, [event(f"new{i}") for i in range(30)])
    new = [raw_id.decode() for raw_id, _ in
           await redis.xrange(settings.stream_key, min=f"({own[-1]}", max="+")]
    caplog.set_level(logging.DEBUG, logger="services.consumer.loop")
    # More entries than one batch: resuming pages through all of them.
    again = await run_until_drained(settings, stream, store, "worker-1",
                                    claim_idle_ms=600_000, batch_size=50)
    assert again.totals.claimed == 0
    assert again.totals.unique == 150
    settled = [r.id for r in logged(caplog.records, "entry_settled")]  # type: ignore[attr-defined]
    assert len(new) == 30
    assert settled == own + new, "its own entries first, then the new ones"
    assert [r.entries for r in logged(caplog.records, "batch_settled")  # type: ignore[attr-defined]
            ] == [50, 50, 20, 30]


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
    # Committed, never acked: all three come back.
    await settle_like_a_consumer(stream, store, doomed, ack=False)
    caplog.set_level(logging.DEBUG, logger="services.consumer.loop")
    await run_until_drained(settings, stream, store, "rescuer", claim_idle_ms=50)
    await publish(stream, [event("k1"), event("k3")])
    await run_until_drained(settings, stream, store, "worker")
    traced = [(r.event_id, r.result)  # type: ignore[attr-defined]
              for r in logged(caplog.records, "entry_settled")]
    assert traced == [("k1", "redelivered"), ("k1", "redelivered"), ("k2", "redelivered"),
                      ("k1", "duplicate"), ("k3", "unique")]


async def test_a_read_brings_no_more_than_batch_bytes_of_the_largest_events(
        settings: Settings, stream: Stream, store: Store,
        caplog: pytest.LogCaptureFixture) -> None:
    # Room for four events of the largest size per read, though BATCH_SIZE is 50: what a
    # consumer holds in memory is bounded by BATCH_BYTES, whatever the events weigh.
    budget: dict[str, Any] = {"max_event_bytes": 1024, "batch_bytes": 4 * 1024 + 1023}
    assert dataclasses.replace(settings, **budget).read_count == 4
    await publish(stream, [event(f"own{i}") for i in range(6)])
    await stream.ensure_group()
    # A previous life of `worker` took six entries and died: resuming them reads by four too.
    assert len(await stream.read_new("worker", 6, 10)) == 6
    await publish(stream, [event(f"new{i}") for i in range(5)])
    caplog.set_level(logging.INFO, logger="services.consumer.loop")
    worker = await run_until_drained(settings, stream, store, "worker",
                                     claim_idle_ms=600_000, **budget)
    assert worker.totals.unique == 11
    assert [r.entries for r in logged(caplog.records, "batch_settled")  # type: ignore[attr-defined]
            ] == [4, 2, 4, 1]


async def test_a_batch_of_large_events_is_settled_in_parts_that_psycopg_sends_whole(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        caplog: pytest.LogCaptureFixture) -> None:
    # Thirty events of 1 MiB, read at once. In one statement (30 MiB), psycopg's pipeline sends
    # part of it and waits for a result that PostgreSQL cannot give before the rest comes:
    # the consumer hung, forever. In parts of at most STATEMENT_BYTES, each is sent whole.
    largest = dataclasses.replace(settings, max_event_bytes=2**20)
    assert largest.read_count >= 30
    await publish(stream, [event(f"e{i}", payload={"blob": f"{i:03d}" + "x" * (2**20 - 200)})
                           for i in range(30)])
    caplog.set_level(logging.INFO, logger="services.consumer.loop")
    worker = consumer(largest, stream, store, "worker")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: drained(stream), what="the large events settled")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)  # a hung consumer is cancelled, not awaited
    assert counts(sql) == (30, 0, 30)
    assert [r.entries for r in logged(caplog.records, "batch_settled")  # type: ignore[attr-defined]
            ] == [30], "one batch, settled in parts"
