"""The consumer's retry policy (`services/consumer/retry.py`) against real failures of PostgreSQL
and Redis, one row of the README's failure table each:

- any other database error (here a missing table): retried as it is, with backoff, never
  dead-lettered, exact once fixed;
- a deadlock or a serialization failure: retried at once, never dead-lettered, exact;
- a lost consumer group: recreated, and the consumer goes on without a restart.

Each test runs a real `Consumer` as a task and reads what it decided from its log records.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest
from redis.asyncio import Redis

from shared.settings import Settings
from shared.store import COUNTER_SHARDS, FLOOR_LOCK, Store
from shared.stream import Stream
from tests.helpers import (
    balance,
    consumer,
    drained,
    event,
    eventually,
    logged,
    publish,
    running,
    with_duplicates,
)

MAX_DELIVERIES = 3


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """What the retry policy and the stream log, from INFO up (`log.records`)."""
    caplog.set_level(logging.INFO, logger="services.consumer.retry")
    caplog.set_level(logging.INFO, logger="shared.stream")
    return caplog


def dead_letters(sql: psycopg.Connection[Any]) -> int:
    row = sql.execute("SELECT count(*) FROM dead_letters").fetchone()
    assert row is not None
    return int(row[0])


async def test_any_other_database_error_is_retried_with_backoff_and_never_dead_lettered(
        settings: Settings, stream: Stream, store: Store, redis: Redis,
        sql: psycopg.Connection[Any], log: pytest.LogCaptureFixture) -> None:
    await publish(stream, [event(f"e{i % 20}") for i in range(30)])
    # Not the data's fault: the table is gone (SQLSTATE 42P01), as after a botched migration.
    # (The counters' table: the consumer's start-up checks read `events`, not this one.)
    sql.execute("ALTER TABLE topic_stats RENAME TO topic_stats_away")
    # Claims due after 50 ms: a consumer that left the batch pending and waited for
    # redeliveries would reach MAX_DELIVERIES quickly.
    worker = consumer(settings, stream, store, "worker", max_deliveries=MAX_DELIVERIES,
                      claim_idle_ms=50)
    async with running(worker):
        # More failed attempts than MAX_DELIVERIES: a policy that gave up on the batch after
        # that many would have dead-lettered it by now.
        await eventually(lambda: asyncio.sleep(
            0, len(logged(log.records, "store_unavailable")) > MAX_DELIVERIES),
            what=f"more than {MAX_DELIVERIES} failed attempts")
        assert dead_letters(sql) == 0
        assert (await stream.received(), await stream.pending()) == (30, 30)
        held = await redis.xpending_range(settings.stream_key, settings.consumer_group,
                                          min="-", max="+", count=100)
        assert [(h["consumer"], h["times_delivered"]) for h in held] == [(b"worker", 1)] * 30
        sql.execute("ALTER TABLE topic_stats_away RENAME TO topic_stats")  # fixed
        await eventually(lambda: drained(stream), what="the batch settled once fixed")
    assert await balance(store, stream) == {"received": 30, "pending": 0, "unique": 20,
                                            "duplicate": 10, "dead": 0}
    assert dead_letters(sql) == 0
    assert worker.totals.batches == 1, "the same batch, retried as it was"
    failures = logged(log.records, "store_unavailable")
    assert [r.attempt for r in failures] == list(range(1, len(failures) + 1))  # type: ignore[attr-defined]
    # The pause before each next attempt (the message's second argument): backing off.
    assert [r.args[1] for r in failures[:4]] == [0.1, 0.2, 0.4, 0.8]  # type: ignore[index]
    assert all(str(r.args[2]).startswith("[42P01] UndefinedTable")  # type: ignore[index]
               for r in failures)
    assert logged(log.records, "store_conflict") == []


async def test_a_serialization_failure_is_retried_at_once_and_never_dead_lettered(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        log: pytest.LogCaptureFixture) -> None:
    # The first attempts to insert fail as PostgreSQL fails a transaction that lost a
    # conflict (SQLSTATE 40001). A sequence counts them: nextval survives the rollback.
    conflicts = MAX_DELIVERIES + 1
    sql.execute(f"""
        CREATE SEQUENCE attempts;
        CREATE FUNCTION conflict_first() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('attempts') <= {conflicts} THEN
                RAISE EXCEPTION 'could not serialize access due to concurrent update'
                    USING ERRCODE = 'serialization_failure';
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER conflict_first BEFORE INSERT ON events
        FOR EACH STATEMENT EXECUTE FUNCTION conflict_first();
    """)
    await publish(stream, [event(f"e{i % 20}") for i in range(30)])
    worker = consumer(settings, stream, store, "worker", max_deliveries=MAX_DELIVERIES,
                      claim_idle_ms=50)
    async with running(worker):
        await eventually(lambda: drained(stream), what="settled after the conflicts")
    assert await balance(store, stream) == {"received": 30, "pending": 0, "unique": 20,
                                            "duplicate": 10, "dead": 0}
    assert dead_letters(sql) == 0
    assert worker.totals.batches == 1
    retried = logged(log.records, "store_conflict")
    assert len(retried) == conflicts
    assert all(str(r.args[0]).startswith("[40001] SerializationFailure")  # type: ignore[index]
               for r in retried)
    assert logged(log.records, "store_unavailable") == [], "a conflict is not an outage: no backoff"


GATE = 4242  # an advisory lock the test holds, to order the lock requests of the deadlock


async def backend_waits(sql: psycopg.Connection[Any], wait_event: str, pid: int | None = None
                        ) -> bool:
    """Whether one backend (that one, if `pid`) waits for a lock of this kind."""
    await asyncio.sleep(0)
    row = sql.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                      "AND wait_event = %s AND (%s::int IS NULL OR pid = %s)",
                      [wait_event, pid, pid]).fetchone()
    return bool(row and row[0] == 1)


async def test_a_deadlock_is_retried_at_once_and_never_dead_lettered(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        database_url: str, log: pytest.LogCaptureFixture) -> None:
    # A real deadlock between the consumer's transaction and another one, T:
    #   1. T inserts the counter rows of topic `auth` (one per shard), and does not commit;
    #   2. the consumer takes the settled floor's lock (shared) and inserts its events, then
    #      waits at a gate: a statement trigger on events takes the advisory lock GATE, which
    #      the test holds;
    #   3. T asks for the floor's lock exclusively (as housekeeping does): it waits for the
    #      consumer;
    #   4. the test opens the gate: the consumer adds to its counters, so it waits for T.
    # The consumer closes the cycle and, with the default deadlock_timeout (1 s) against T's
    # 60 s, is the one PostgreSQL aborts: SQLSTATE 40P01, on the settle path. Its locks go to
    # T as the abort releases them, so its retry waits for T instead of meeting it again.
    sql.execute(f"""
        CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared({GATE}); RETURN NULL; END $$;
        CREATE TRIGGER gate AFTER INSERT ON events
        FOR EACH STATEMENT EXECUTE FUNCTION gate();
    """)
    sql.execute("SELECT pg_advisory_lock(%s)", [GATE])
    await publish(stream, [event(f"k{i}") for i in range(1, 10)] + [event("k1")])
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:
        await other.execute("SET deadlock_timeout = '60s'")
        await other.execute("BEGIN")
        stream_id = await store.stream_id()
        await other.execute("INSERT INTO topic_stats (stream, topic, shard) "
                            "SELECT %s, 'auth', s FROM generate_series(0, %s) AS s",
                            [stream_id, COUNTER_SHARDS - 1])
        worker = consumer(settings, stream, store, "worker", max_deliveries=MAX_DELIVERIES)
        async with running(worker):
            await eventually(lambda: backend_waits(sql, "advisory"),
                             what="the consumer waits at the gate, holding the floor's lock")
            floor = asyncio.create_task(
                other.execute("SELECT pg_advisory_xact_lock(%s, %s)", [FLOOR_LOCK, stream_id]))
            await eventually(lambda: backend_waits(sql, "advisory", other.info.backend_pid),
                             what="T waits for the consumer")
            sql.execute("SELECT pg_advisory_unlock(%s)", [GATE])
            await floor  # the consumer was aborted, so T got the lock
            await other.execute("ROLLBACK")
            await eventually(lambda: drained(stream), what="settled after the deadlock")
    assert await balance(store, stream) == {"received": 10, "pending": 0, "unique": 9,
                                            "duplicate": 1, "dead": 0}
    assert dead_letters(sql) == 0
    assert worker.totals.batches == 1
    [retried] = logged(log.records, "store_conflict")
    assert str(retried.args[0]).startswith("[40P01] DeadlockDetected")  # type: ignore[index]
    assert logged(log.records, "store_unavailable") == [], "a deadlock is not an outage: no backoff"


async def test_a_lost_consumer_group_is_recreated_with_an_alarm_and_the_consumer_goes_on(
        settings: Settings, stream: Stream, store: Store, redis: Redis,
        log: pytest.LogCaptureFixture) -> None:
    await publish(stream, with_duplicates(unique=20, duplicates=10, seed=1))
    worker = consumer(settings, stream, store, "worker")
    async with running(worker):
        await eventually(lambda: drained(stream), what="the first events settled")
        await redis.xgroup_destroy(settings.stream_key, settings.consumer_group)
        # Events published while the group is gone: the same consumer must settle them.
        await publish(stream, [event(f"n{i % 10}", topic="late") for i in range(15)])
        await eventually(lambda: drained(stream), what="the events published after the loss")
    assert await balance(store, stream) == {"received": 45, "pending": 0, "unique": 30,
                                            "duplicate": 15, "dead": 0}
    # One consumer, started once, settled what came before the loss and after it.
    assert (worker.totals.unique, worker.totals.duplicate) == (30, 15)
    [lost] = logged(log.records, "group_missing")
    assert str(lost.args[2]).startswith("NOGROUP")  # type: ignore[index]
    assert len(logged(log.records, "group_created")) == 2, "created, then recreated"
    assert logged(log.records, "broker_unavailable") == []
    # Not silently: the loss stands as an alarm until cleared.
    assert [alarm.kind for alarm in await store.alarms()] == ["group_lost"]
    [raised] = logged(log.records, "alarm_raised")
    assert "was gone and has been recreated" in raised.getMessage()
