"""Poison entries: isolated from their batch, dead-lettered after MAX_DELIVERIES deliveries
(counted by Redis), never blocking the stream; replayed once fixed, and never counted twice."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.sql import SQL, Identifier, Literal
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
    logged,
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


def set_for_new_sessions(database_url: str, **settings: str) -> None:
    """Settings of the test's database, as a DBA would set them (ALTER DATABASE ... SET): they
    reach the sessions opened after this, so a test asks for them before its clients."""
    name = str(conninfo_to_dict(database_url)["dbname"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        for setting, value in settings.items():
            conn.execute(SQL("ALTER DATABASE {} SET {} = {}").format(
                Identifier(name), Identifier(setting), Literal(value)))


@pytest.fixture
def locks_time_out(database_url: str) -> None:
    """A wait for a lock ends after 100 ms (the 60 s statement_timeout of every logagg session
    ends it too, only later)."""
    set_for_new_sessions(database_url, lock_timeout="100ms")


@pytest.fixture
def sorts_capped(database_url: str) -> None:
    """A sort gets 1 MB of memory, and no query may write more than 1 MB of temporary files: a
    DBA's guard against one query filling the memory or the disk."""
    set_for_new_sessions(database_url, work_mem="1MB", temp_file_limit="1MB")


async def test_an_entry_that_fails_alone_while_the_store_answers_is_dead_lettered_and_its_neighbours_are_stored(  # noqa: E501
        locks_time_out: None, settings: Settings, stream: Stream, store: Store,
        sql: psycopg.Connection[Any], database_url: str) -> None:
    # A failure that is not the data's, of one entry only: another session inserted the key
    # `held` and keeps its transaction open. Inserting the same key waits for it, and
    # PostgreSQL gives up after lock_timeout (55P03, a StoreUnavailable), on every delivery,
    # while the store answers and every other entry settles. The whole batch used to be
    # retried, with backoff, for as long as the lock was held.
    with psycopg.connect(database_url) as holder:
        holder.execute("INSERT INTO dedup_keys (generation, topic, event_id, stream_ms, "
                       "stream_seq) SELECT generation, 'auth', 'held', 1, 0 FROM streams "
                       "WHERE id = %s", [await store.stream_id()])
        await publish(stream, [event(f"e{i}") for i in range(10)] + [event("held")]
                      + [event(f"f{i}") for i in range(10)])
        worker = await run_until_drained(settings, stream, store, max_deliveries=3,
                                         claim_idle_ms=50)
        assert await balance(store, stream) == {"received": 21, "pending": 0, "unique": 20,
                                                "duplicate": 0, "dead": 1}
        [(topic, event_id, reason, deliveries, status, error)] = letters(sql)
        assert (topic, event_id, reason, deliveries, status) == (
            "auth", "held", "store_failed", 3, "dead")
        assert error.startswith("[55P03] LockNotAvailable: canceling statement due to lock "
                                "timeout"), error
        assert worker.totals.dead_lettered == 1
        holder.rollback()
    # Such a letter is replayed like any other once its cause is gone.
    [letter] = await store.dead_letters()
    assert (await replay(settings, [letter.position])).replayed == [str(letter.position)]
    await run_until_drained(settings, stream, store, max_deliveries=3)
    assert await balance(store, stream) == {"received": 21, "pending": 0, "unique": 21,
                                            "duplicate": 0, "dead": 0}


async def test_an_entry_that_always_conflicts_is_dead_lettered_instead_of_retried_at_once_forever(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    # PostgreSQL aborts every transaction that inserts `bad` as a serialization failure
    # (40001, a StoreConflict): a conflict is retried at once, so this one used to spin.
    sql.execute("""
        CREATE FUNCTION conflict_on_bad() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.event_id = 'bad' THEN
                RAISE EXCEPTION 'could not serialize access due to concurrent update'
                    USING ERRCODE = 'serialization_failure';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER conflict_on_bad BEFORE INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION conflict_on_bad();
    """)
    await publish(stream, [event("e1"), event("bad"), event("e2")])
    await run_until_drained(settings, stream, store, max_deliveries=2, claim_idle_ms=50)
    assert await balance(store, stream) == {"received": 3, "pending": 0, "unique": 2,
                                            "duplicate": 0, "dead": 1}
    [(_, event_id, reason, _, _, error)] = letters(sql)
    assert (event_id, reason) == ("bad", "store_failed")
    assert error.startswith("[40001] SerializationFailure"), error


async def test_a_batch_postgresql_refuses_for_its_size_is_settled_entry_by_entry(
        sorts_capped: None, settings: Settings, stream: Stream, store: Store,
        caplog: pytest.LogCaptureFixture) -> None:
    # A limit of the server, not of the data: the insert sorts the rows of its statement by
    # key, and 4 MiB of events (one statement) spill past work_mem into a temporary file over
    # temp_file_limit (53400, a StoreUnavailable), every time, while one event alone sorts in
    # memory. Such a batch used to be retried forever; now its entries settle one by one, and
    # none fails alone (MAX_DELIVERIES 1 would dead-letter it at once).
    caplog.set_level(logging.INFO, logger="services.consumer.dead_letters")
    await publish(stream, [event(f"e{i}", payload={"blob": "x" * 200_000}) for i in range(30)])
    await run_until_drained(settings, stream, store, max_deliveries=1)
    assert await balance(store, stream) == {"received": 30, "pending": 0, "unique": 30,
                                            "duplicate": 0, "dead": 0}
    isolated = logged(caplog.records, "batch_isolated")
    assert sum(r.entries for r in isolated) == 30  # type: ignore[attr-defined]
    # PostgreSQL 17 and later quote the setting's name ("temp_file_limit"); 15 does not.
    assert all(re.match(
        r'\[53400\] ConfigurationLimitExceeded: temporary file size exceeds "?temp_file_limit"? ',
        r.error) for r in isolated)  # type: ignore[attr-defined]


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
