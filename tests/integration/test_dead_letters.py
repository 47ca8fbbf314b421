"""Poison entries: isolated from their batch, dead-lettered after MAX_DELIVERIES deliveries
(counted by Redis), never blocking the stream; replayed once fixed, and never counted twice."""

from __future__ import annotations

from dataclasses import dataclass
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
from tests.helpers import (
    balance,
    consumer,
    event,
    eventually,
    publish,
    run_until_drained,
    running,
    settle_like_a_consumer,
)


def letters(sql: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return sql.execute("SELECT topic, event_id, reason, deliveries, status, last_error "
                       "FROM dead_letters ORDER BY stream_ms, stream_seq").fetchall()


def refuse(sql: psycopg.Connection[Any], column: str, value: str) -> None:
    """A rule added in the database: a trigger that refuses events whose `column` is `value`
    (RAISE EXCEPTION: SQLSTATE P0001), until it is dropped."""
    sql.execute(f"""
        CREATE FUNCTION refuse_by_rule() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.{column} = '{value}' THEN
                RAISE EXCEPTION '{column} {value} refused by policy';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_by_rule BEFORE INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION refuse_by_rule();
    """)


@dataclass(frozen=True)
class Unstorable:
    event: dict[str, Any]
    error: str  # how the dead letter's last_error begins: the SQLSTATE, or psycopg's refusal
    rule: bool = False  # refused by a rule added in the database, not by a type


UNSTORABLE = {
    # Each passes the schema; PostgreSQL (or psycopg, for text) refuses to store it.
    "NUL in a payload string": Unstorable(
        event("bad", payload={"note": "a\u0000b"}), "[22P05] UntranslatableCharacter"),
    "NUL in the event_id": Unstorable(
        event("bad\u0000id"), "[22021] CharacterNotInRepertoire"),
    "offset PostgreSQL cannot represent": Unstorable(
        event("bad", timestamp="2026-11-25T10:00:00-23:59"), "[22009] InvalidTimeZoneDisplacementValue"),  # noqa: E501
    "a rule added in the database": Unstorable(
        event("bad"), "[P0001] RaiseException: event_id bad refused by policy", rule=True),
}


@pytest.mark.parametrize("bad", UNSTORABLE.values(), ids=UNSTORABLE.keys())
async def test_an_event_the_store_rejects_is_dead_lettered_after_max_deliveries_and_its_neighbours_are_stored(  # noqa: E501
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        bad: Unstorable) -> None:
    if bad.rule:
        refuse(sql, "event_id", "bad")
    await publish(stream, [event(f"e{i}") for i in range(20)] + [bad.event]
                  + [event(f"f{i}") for i in range(20)])
    worker = await run_until_drained(settings, stream, store, max_deliveries=3,
                                     claim_idle_ms=50)
    assert await balance(store, stream) == {"received": 41, "pending": 0, "unique": 40,
                                            "duplicate": 0, "dead": 1}
    [(topic, _, reason, deliveries, status, error)] = letters(sql)
    assert (topic, reason, deliveries, status) == ("auth", "store_rejected", 3, "dead")
    assert error.startswith(bad.error), error  # the database's own words
    assert worker.totals.dead_lettered == 1
    raw = sql.execute("SELECT event FROM dead_letters").fetchone()
    assert raw is not None and raw[0] == orjson.dumps(bad.event)


async def test_an_entry_is_not_dead_lettered_before_its_last_delivery(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        redis: Redis) -> None:
    await publish(stream, [UNSTORABLE["NUL in a payload string"].event])
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
    refuse(sql, "topic", "blocked")
    await publish(stream, [event("ok-1"), event("held", topic="blocked"), event("ok-2")])
    await run_until_drained(settings, stream, store, max_deliveries=1)
    assert await balance(store, stream) == {"received": 3, "pending": 0, "unique": 2,
                                            "duplicate": 0, "dead": 1}
    [letter] = await store.dead_letters()
    assert "topic blocked refused by policy" in letter.last_error

    sql.execute("DROP TRIGGER refuse_by_rule ON events")
    result = await replay(settings, [letter.position])
    assert result.replayed == [str(letter.position)]
    # Replayed again before the first replay settled: it goes out, and must count nothing.
    assert (await replay(settings, [letter.position])).replayed == [str(letter.position)]
    await run_until_drained(settings, stream, store, max_deliveries=1)
    assert await balance(store, stream) == {"received": 3, "pending": 0, "unique": 3,
                                            "duplicate": 0, "dead": 0}
    assert [row[4] for row in letters(sql)] == ["replayed"]
    stored = sql.execute("SELECT count(*) FROM events WHERE topic = 'blocked'").fetchone()
    assert stored == (1,)
    # Once settled, the letter is not dead any more: a third replay is refused.
    late = await replay(settings, [letter.position])
    assert (late.replayed, late.skipped) == ([], {str(letter.position): "already replayed"})


async def test_replaying_the_same_letter_twice_counts_it_once(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    await publish(stream, [UNSTORABLE["offset PostgreSQL cannot represent"].event])
    await run_until_drained(settings, stream, store, max_deliveries=1)
    [letter] = await store.dead_letters()
    # The event is fixed by hand in the letter, then replayed twice at once (two operators).
    fixed = orjson.dumps(event("bad"))
    sql.execute("UPDATE dead_letters SET event = %s", [fixed])
    await stream.replay([(str(letter.position), fixed), (str(letter.position), fixed)])
    await run_until_drained(settings, stream, store, max_deliveries=1)
    assert await balance(store, stream) == {"received": 1, "pending": 0, "unique": 1,
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
    await publish(stream, [event("fine")])
    await redis.xadd(settings.stream_key, {EVENT_FIELD: b"not json"})
    await redis.xadd(settings.stream_key, {b"other": b"field"})
    await run_until_drained(settings, stream, store, max_deliveries=1)
    assert [row[2] for row in letters(sql)] == ["undecodable", "undecodable"]
    assert await balance(store, stream) == {"received": 1, "pending": 0, "unique": 1,
                                            "duplicate": 0, "dead": 0}


@dataclass(frozen=True)
class Deleted:
    """Entries delivered to `holder`, some of them deleted from the stream (by hand) before
    `settler` takes them over: by a claim, or by resuming its own after a restart."""

    event_ids: list[str]
    deleted: list[int]  # indexes of the entries deleted
    committed: bool  # the holder committed them (never acked) before they were deleted
    settler: str
    letters: list[str]  # the reasons of the dead letters expected
    unique: int
    duplicate: int


DELETED = {
    "held by a dead consumer, claimed by another": Deleted(
        ["e0", "e1", "e2"], [1], False, "rescuer", ["deleted"], unique=2, duplicate=0),
    "settled already, then deleted": Deleted(
        ["e1", "e1"], [0, 1], True, "rescuer", [], unique=1, duplicate=1),
    "held by a consumer that restarts": Deleted(
        ["e0", "e1"], [0], False, "holder", ["deleted"], unique=1, duplicate=0),
}


@pytest.mark.parametrize("case", DELETED.values(), ids=DELETED.keys())
async def test_a_pending_entry_deleted_from_the_stream_is_dead_lettered_unless_settled(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        redis: Redis, case: Deleted) -> None:
    await stream.ensure_group()
    await publish(stream, [event(event_id) for event_id in case.event_ids])
    held = await stream.read_new("holder", 10, 10)  # delivered; then that consumer died
    if case.committed:
        await settle_like_a_consumer(stream, store, held, ack=False)
    await redis.xdel(settings.stream_key, *(held[i][0] for i in case.deleted))
    # A restarted holder resumes its own entries at once; another consumer claims them.
    claim_idle_ms = 600_000 if case.settler == "holder" else 50
    await run_until_drained(settings, stream, store, case.settler, claim_idle_ms=claim_idle_ms)
    assert [row[2] for row in letters(sql)] == case.letters
    assert await balance(store, stream) == {
        "received": len(case.event_ids), "pending": 0, "unique": case.unique,
        "duplicate": case.duplicate, "dead": len(case.letters)}
