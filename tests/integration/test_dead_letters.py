"""Poison entries: isolated from their batch, dead-lettered after MAX_DELIVERIES deliveries
(counted by Redis), never blocking the stream; replayed once fixed, and never counted twice."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import psycopg
import pytest
from redis.asyncio import Redis

from services.dlq.__main__ import replay
from shared.constants import EVENT_FIELD
from shared.entries import StreamId
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import event, eventually
from tests.integration.test_consumer import consumer, drained, running


async def stats(store: Store, stream: Stream) -> dict[str, int]:
    counts = await store.stats()
    return {"received": await stream.received(), "pending": await stream.pending(),
            "unique": counts.total("unique_processed"),
            "duplicate": counts.total("duplicate_dropped"),
            "dead": counts.total("dead_lettered")}


def letters(sql: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return sql.execute("SELECT topic, event_id, reason, deliveries, status, last_error "
                       "FROM dead_letters ORDER BY stream_ms, stream_seq").fetchall()


UNSTORABLE = {
    # Each passes the schema; PostgreSQL (or psycopg, for text) refuses to store it.
    "NUL in a payload string": event("bad", payload={"note": "a\u0000b"}),
    "NUL in the event_id": event("bad\u0000id"),
    "offset PostgreSQL cannot represent": event("bad", timestamp="2026-11-25T10:00:00-23:59"),
}


@pytest.mark.parametrize("bad", UNSTORABLE.values(), ids=UNSTORABLE.keys())
async def test_an_event_the_store_rejects_is_dead_lettered_after_max_deliveries_and_its_neighbours_are_stored(  # noqa: E501
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        bad: dict[str, Any]) -> None:
    events = [event(f"e{i}") for i in range(20)] + [bad] + [event(f"f{i}") for i in range(20)]
    await stream.publish([orjson.dumps(e) for e in events])
    worker = consumer(settings, stream, store, "worker", max_deliveries=3, claim_idle_ms=50)
    async with running(worker):
        await eventually(lambda: drained(stream), what="stream drained")
    assert await stats(store, stream) == {"received": 41, "pending": 0, "unique": 40,
                                          "duplicate": 0, "dead": 1}
    [(topic, _, reason, deliveries, status, error)] = letters(sql)
    assert (topic, reason, deliveries, status) == ("auth", "store_rejected", 3, "dead")
    assert error  # the database's own words
    assert worker.totals.dead_lettered == 1
    raw = sql.execute("SELECT event FROM dead_letters").fetchone()
    assert raw is not None and orjson.loads(raw[0]) == bad


async def test_an_entry_is_not_dead_lettered_before_its_last_delivery(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        redis: Redis) -> None:
    await stream.publish([orjson.dumps(UNSTORABLE["NUL in a payload string"])])
    worker = consumer(settings, stream, store, "worker", max_deliveries=3,
                      claim_idle_ms=600_000)
    async with running(worker):
        await eventually(lambda: _failed_once(worker), what="first delivery failed")
    assert letters(sql) == []
    assert await stream.pending() == 1
    [pending] = await redis.xpending_range(settings.stream_key, settings.consumer_group,
                                           min="-", max="+", count=10)
    assert pending["times_delivered"] == 1


async def _failed_once(worker: Any) -> bool:
    return bool(worker.totals.left_pending == 1)


async def test_a_replayed_letter_is_stored_once_after_the_cause_is_fixed(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    # The store refuses a topic, as a database rule would, until an operator lifts the rule.
    sql.execute("""
        CREATE FUNCTION refuse_blocked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.topic = 'blocked' THEN RAISE EXCEPTION 'topic blocked by policy'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_blocked BEFORE INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION refuse_blocked();
    """)
    events = [event("ok-1"), event("held", topic="blocked"), event("ok-2")]
    await stream.publish([orjson.dumps(e) for e in events])
    fast = dataclasses.replace(settings, max_deliveries=1)
    async with running(consumer(fast, stream, store, "worker")):
        await eventually(lambda: drained(stream), what="stream drained")
    assert await stats(store, stream) == {"received": 3, "pending": 0, "unique": 2,
                                          "duplicate": 0, "dead": 1}
    [letter] = await store.dead_letters()
    assert "topic blocked by policy" in letter.last_error

    sql.execute("DROP TRIGGER refuse_blocked ON events")
    result = await replay(settings, [letter.position])
    assert result.replayed == [str(letter.position)]
    # Replayed again before the first replay settled: it goes out, and must count nothing.
    assert (await replay(settings, [letter.position])).replayed == [str(letter.position)]
    async with running(consumer(fast, stream, store, "worker")):
        await eventually(lambda: drained(stream), what="replay settled")
    assert await stats(store, stream) == {"received": 3, "pending": 0, "unique": 3,
                                          "duplicate": 0, "dead": 0}
    assert [row[4] for row in letters(sql)] == ["replayed"]
    stored = sql.execute("SELECT count(*) FROM events WHERE topic = 'blocked'").fetchone()
    assert stored == (1,)
    # Once settled, the letter is not dead any more: a third replay is refused.
    late = await replay(settings, [letter.position])
    assert (late.replayed, late.skipped) == ([], {str(letter.position): "already replayed"})


async def test_replaying_the_same_letter_twice_counts_it_once(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    await stream.publish([orjson.dumps(UNSTORABLE["offset PostgreSQL cannot represent"])])
    fast = dataclasses.replace(settings, max_deliveries=1)
    async with running(consumer(fast, stream, store, "worker")):
        await eventually(lambda: drained(stream), what="dead-lettered")
    [letter] = await store.dead_letters()
    # The event is fixed by hand in the letter, then replayed twice at once (two operators).
    fixed = orjson.dumps(event("bad"))
    sql.execute("UPDATE dead_letters SET event = %s", [fixed])
    await stream.replay([(str(letter.position), fixed), (str(letter.position), fixed)])
    async with running(consumer(fast, stream, store, "worker")):
        await eventually(lambda: drained(stream), what="replays settled")
    assert await stats(store, stream) == {"received": 1, "pending": 0, "unique": 1,
                                          "duplicate": 0, "dead": 0}


async def test_dlq_replay_skips_what_it_cannot_replay(
        settings: Settings, stream: Stream, store: Store) -> None:
    await stream.ensure_group()
    result = await replay(settings, [StreamId(1, 1)])
    assert result.replayed == []
    assert result.skipped == {"1-1": "no such dead letter"}


async def test_an_entry_not_written_by_ingest_is_kept_as_a_letter_but_not_counted(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        redis: Redis) -> None:
    await stream.publish([orjson.dumps(event("fine"))])
    await redis.xadd(settings.stream_key, {EVENT_FIELD: b"not json"})
    await redis.xadd(settings.stream_key, {b"other": b"field"})
    fast = dataclasses.replace(settings, max_deliveries=1)
    async with running(consumer(fast, stream, store, "worker")):
        await eventually(lambda: drained(stream), what="stream drained")
    assert [row[2] for row in letters(sql)] == ["undecodable", "undecodable"]
    assert await stats(store, stream) == {"received": 1, "pending": 0, "unique": 1,
                                          "duplicate": 0, "dead": 0}


async def test_a_pending_entry_deleted_from_the_stream_is_dead_lettered_not_retried(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        redis: Redis) -> None:
    await stream.ensure_group()
    await stream.publish([orjson.dumps(event(f"e{i}")) for i in range(3)])
    held = await stream.read_new("dead", 10, 10)  # delivered; then that consumer died
    await redis.xdel(settings.stream_key, held[1][0])  # and someone deleted one entry
    rescuer = consumer(settings, stream, store, "rescuer", claim_idle_ms=50)
    async with running(rescuer):
        await eventually(lambda: drained(stream), what="stream drained")
    assert [row[2] for row in letters(sql)] == ["deleted"]
    assert await stats(store, stream) == {"received": 3, "pending": 0, "unique": 2,
                                          "duplicate": 0, "dead": 1}


async def test_a_deleted_entry_that_was_settled_already_is_not_counted_again(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        redis: Redis) -> None:
    from services.consumer.loop import decode

    await stream.ensure_group()
    await stream.publish([orjson.dumps(event("e1")), orjson.dumps(event("e1"))])
    held = await stream.read_new("dead", 10, 10)
    await store.settle(decode(held)[0])  # committed, never acked; then both entries deleted
    await redis.xdel(settings.stream_key, *(raw_id for raw_id, _ in held))
    async with running(consumer(settings, stream, store, "rescuer", claim_idle_ms=50)):
        await eventually(lambda: drained(stream), what="stream drained")
    assert letters(sql) == []
    assert await stats(store, stream) == {"received": 2, "pending": 0, "unique": 1,
                                          "duplicate": 1, "dead": 0}


async def test_a_restarted_consumer_dead_letters_its_own_deleted_pending_entries(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        redis: Redis) -> None:
    await stream.ensure_group()
    await stream.publish([orjson.dumps(event(f"e{i}")) for i in range(2)])
    held = await stream.read_new("worker", 10, 10)
    await redis.xdel(settings.stream_key, held[0][0])
    async with running(consumer(settings, stream, store, "worker", claim_idle_ms=600_000)):
        await eventually(lambda: drained(stream), what="own pending settled")
    assert [row[2] for row in letters(sql)] == ["deleted"]
    assert await stats(store, stream) == {"received": 2, "pending": 0, "unique": 1,
                                          "duplicate": 0, "dead": 1}
