"""The claim path (issue 9): taking over idle entries without losing the deleted ones, and a
consumer keeping hold of a batch however long it takes to settle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any, cast

import psycopg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.consumer.recovery import Recovery
from services.stack.servers import PostgresServer
from shared.clients import Role, opened
from shared.exceptions import StoreUnavailable
from shared.settings import Settings
from shared.store import FLOOR_LOCK, Store
from shared.stream import CLAIM_START, RawEntry, Stream
from tests.helpers import (
    balance,
    consumer,
    drained,
    event,
    eventually,
    publish,
    run_until_drained,
    running,
    settle_like_a_consumer,
)


async def held(redis: Redis, settings: Settings) -> dict[bytes, tuple[bytes, int, int]]:
    """The group's unacked entries: id -> (consumer, deliveries, idle ms)."""
    pending = await redis.xpending_range(settings.stream_key, settings.consumer_group,
                                         min="-", max="+", count=1000)
    return {cast(bytes, p["message_id"]): (cast(bytes, p["consumer"]), int(p["times_delivered"]),
                                           int(p["time_since_delivered"]))
            for p in pending}


async def idle_for(redis: Redis, settings: Settings, ms: int) -> bool:
    return all(idle >= ms for _, _, idle in (await held(redis, settings)).values())


async def test_a_claim_pages_through_idle_entries_and_leaves_deleted_ones_unacked(
        settings: Settings, stream: Stream, redis: Redis) -> None:
    await stream.ensure_group()
    await publish(stream, [event(f"e{i}") for i in range(5)])
    ids = [raw_id for raw_id, _ in await stream.read_new("dead", 10, 10)]
    await redis.xdel(settings.stream_key, ids[1], ids[4])
    await eventually(lambda: idle_for(redis, settings, 50), what="entries idle for 50 ms")
    pages, start = [], CLAIM_START
    while True:
        page = await stream.claim_idle("rescuer", min_idle_ms=50, start=start, count=2)
        pages.append(([raw_id for raw_id, _ in page.entries], page.deleted))
        start = page.next_start
        if start == CLAIM_START:
            break
    assert pages == [([ids[0]], [ids[1]]), ([ids[2], ids[3]], []), ([], [ids[4]])]
    after = await held(redis, settings)
    # Claimed entries count a delivery; deleted ones stay unacked, with their holder.
    assert {i: after[i][:2] for i in ids} == {
        ids[0]: (b"rescuer", 2), ids[1]: (b"dead", 1), ids[2]: (b"rescuer", 2),
        ids[3]: (b"rescuer", 2), ids[4]: (b"dead", 1)}
    # Just claimed: not idle, so nothing for the next claimer.
    again = await stream.claim_idle("thief", min_idle_ms=50, start=CLAIM_START, count=10)
    assert again.entries == []


@pytest.mark.parametrize("next_round", ["by the same consumer", "by another consumer"])
async def test_deleted_entries_a_claim_reports_are_dead_lettered_even_if_the_store_fails_then(
        settings: Settings, stream: Stream, store: Store, redis: Redis,
        postgres_server: PostgresServer, database_url: str, next_round: str) -> None:
    settings = dataclasses.replace(settings, claim_idle_ms=50)
    await stream.ensure_group()
    await publish(stream, [event(f"e{i}") for i in range(4)])
    ids = [raw_id for raw_id, _ in await stream.read_new("dead", 10, 10)]
    gone = [ids[1], ids[3]]
    await redis.xdel(settings.stream_key, *gone)
    await eventually(lambda: idle_for(redis, settings, 50), what="entries idle for 50 ms")
    # A consumer of its own, which sees the outage within a second (its pool's timeout).
    quick = Role("rescuer", pool_size=1, pool_timeout=1.0, wait_for_store=True)
    async with opened(settings, quick) as own:
        rescuer = Recovery(own.stream, own.store, "rescuer", settings)
        postgres_server.stop()  # restarting, as the claim reports the deleted entries
        try:
            with pytest.raises(StoreUnavailable):
                await rescuer.claim()
            assert [i for i in gone if i in await held(redis, settings)] == gone, \
                "the round failed: the deleted ids are still unacked"
        finally:
            postgres_server.start()
        if next_round == "by the same consumer":
            # As its retry policy does: the same call again, until the store answers.
            claimed: list[RawEntry] = []

            async def claimed_once_back() -> bool:
                with contextlib.suppress(StoreUnavailable):
                    claimed.extend(await rescuer.claim())
                    return True
                return False

            await eventually(claimed_once_back, what="the round done once the store is back")
            assert [raw_id for raw_id, _ in claimed] == [ids[0], ids[2]], \
                "the page the failed round claimed is handed out, not lost"
            after = await held(redis, settings)
            assert [after[i][:2] for i in (ids[0], ids[2])] == [(b"rescuer", 2)] * 2, \
                "the retry finished the page it had claimed, instead of claiming it again"
            await settle_like_a_consumer(own.stream, own.store, claimed)
    if next_round == "by another consumer":  # the first one died after its failed round
        await run_until_drained(settings, stream, store, "rescuer-2")
    with psycopg.connect(database_url) as conn:
        letters = conn.execute("SELECT stream_ms, stream_seq, reason FROM dead_letters "
                               "ORDER BY stream_ms, stream_seq").fetchall()
    assert [(f"{ms}-{seq}".encode(), reason) for ms, seq, reason in letters] == [
        (gone[0], "deleted"), (gone[1], "deleted")]
    assert await balance(store, stream) == {"received": 4, "pending": 0, "unique": 2,
                                            "duplicate": 0, "dead": 2}


async def test_keeping_hold_refreshes_only_what_the_consumer_still_holds(
        settings: Settings, stream: Stream, redis: Redis) -> None:
    await stream.ensure_group()
    await publish(stream, [event(f"e{i}") for i in range(4)])
    ids = [raw_id for raw_id, _ in await stream.read_new("owner", 10, 10)]
    await redis.xclaim(settings.stream_key, settings.consumer_group, "other", 0, [ids[1]])
    await redis.xdel(settings.stream_key, ids[2])
    await stream.ack([ids[3]])
    await eventually(lambda: idle_for(redis, settings, 100), what="entries idle for 100 ms")
    assert await stream.keep_owned("owner", ids) == 1
    after = await held(redis, settings)
    assert after[ids[0]][:2] == (b"owner", 1) and after[ids[0]][2] < 100, \
        "refreshed, no delivery counted"
    assert after[ids[1]][:2] == (b"other", 2), "claimed by another consumer: left to it"
    assert after[ids[2]][:2] == (b"owner", 1) and after[ids[2]][2] >= 100, \
        "deleted: left unacked for recovery to dead-letter, not dropped"
    assert ids[3] not in after


CLAIM_IDLE_MS = 500


async def settle_waits_for_the_floor(sql: psycopg.Connection[Any], redis: Redis,
                                     settings: Settings, holder: bytes) -> bool:
    """`holder` has read the batch and one transaction waits for the floor's lock. Both: a
    wait for that lock can also come before any read (a stream's first `stream_id()` makes its
    first dedup generation under it), so a waiter alone does not say the batch is held."""
    await asyncio.sleep(0)
    row = sql.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                      "AND wait_event = 'advisory' AND pid <> pg_backend_pid()").fetchone()
    if not (row and row[0] == 1):
        return False
    try:
        entries = await held(redis, settings)
    except ResponseError:  # NOGROUP: the consumer is still starting
        return False
    return bool(entries) and all(who == holder for who, _, _ in entries.values())


async def test_a_batch_settling_for_longer_than_claim_idle_ms_stays_with_its_consumer(
        settings: Settings, stream: Stream, store: Store, redis: Redis,
        sql: psycopg.Connection[Any]) -> None:
    await publish(stream, [event(f"e{i % 20}") for i in range(30)])
    # Made now: the first call makes the stream's first generation under the floor lock, which
    # must not be what waits below.
    stream_id = await store.stream_id()
    slow = consumer(settings, stream, store, "slow", claim_idle_ms=CLAIM_IDLE_MS)
    other = consumer(settings, stream, store, "other", claim_idle_ms=CLAIM_IDLE_MS)
    async with running(slow):
        # Every settling transaction shares the settled floor's lock: holding it makes them
        # wait. Released before the consumers are stopped, which they could not be meanwhile.
        sql.execute("SELECT pg_advisory_lock(%s, %s)", [FLOOR_LOCK, stream_id])
        try:
            await eventually(lambda: settle_waits_for_the_floor(sql, redis, settings, b"slow"),
                             what="slow's batch waits for the floor")
            async with running(other):
                # Watch the batch while it waits 4 * CLAIM_IDLE_MS, with `other` scanning for
                # idle entries every CLAIM_IDLE_MS / 2.
                until = time.monotonic() + 4 * CLAIM_IDLE_MS / 1000
                seen: set[tuple[bytes, int]] = set()
                most_idle = 0

                async def watched() -> bool:
                    nonlocal most_idle
                    for holder, deliveries, idle in (await held(redis, settings)).values():
                        seen.add((holder, deliveries))
                        most_idle = max(most_idle, idle)
                    return time.monotonic() > until

                try:
                    await eventually(watched, what="the batch watched")
                finally:
                    sql.execute("SELECT pg_advisory_unlock_all()")
                assert seen == {(b"slow", 1)}
                assert most_idle < CLAIM_IDLE_MS
                await eventually(lambda: drained(stream), what="the batch settled")
        finally:
            sql.execute("SELECT pg_advisory_unlock_all()")
    assert other.totals.claimed == 0
    assert (slow.totals.batches, slow.totals.redelivered) == (1, 0)
    assert await balance(store, stream) == {"received": 30, "pending": 0, "unique": 20,
                                            "duplicate": 10, "dead": 0}
