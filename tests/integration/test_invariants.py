"""Invariants and their alarms (services/consumer/invariants.py), each sign of each fault made
for real on the test's Redis and PostgreSQL. The whole fault, a Redis restarted from a
truncated append-only file, is tests/acceptance/test_broker_history.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from redis.asyncio import Redis

from services.cli import main
from services.consumer import invariants
from services.stack.servers import RedisServer
from shared.constants import mark_key, received_key
from shared.entries import StreamId
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import (
    balance,
    consumer,
    drained,
    event,
    eventually,
    logged,
    publish,
    run_until_drained,
    running,
    with_duplicates,
)


async def alarm_kinds(store: Store) -> list[str]:
    return [alarm.kind for alarm in await store.alarms()]


async def settled_batch(settings: Settings, stream: Stream, store: Store) -> None:
    await publish(stream, with_duplicates(unique=20, duplicates=10))
    await run_until_drained(settings, stream, store)


async def test_nothing_is_raised_while_every_invariant_holds(
        settings: Settings, stream: Stream, store: Store) -> None:
    await settled_batch(settings, stream, store)
    start = await store.mark()  # the consumer checked once, at its start
    assert start == await stream.mark() == 1
    for _ in range(2):
        await invariants.check_broker_history(stream, store)
        await invariants.check_balance(stream, store)
    assert await alarm_kinds(store) == []
    assert await store.mark() == await stream.mark() == start + 2


async def test_a_broker_whose_history_mark_went_back_raises_broker_history_lost(
        settings: Settings, stream: Stream, store: Store, redis: Redis) -> None:
    await settled_batch(settings, stream, store)
    await invariants.check_broker_history(stream, store)
    await invariants.check_broker_history(stream, store)
    mark = await store.mark()
    # The broker as restored from a file written between the last two checks.
    await redis.set(mark_key(settings.stream_key), mark - 1)
    await invariants.check_broker_history(stream, store)
    [alarm] = await store.alarms()
    assert alarm.kind == "broker_history_lost"
    assert f"history mark of stream {settings.stream_key!r} is {mark - 1}, but it had " \
           f"acknowledged {mark}" in alarm.message
    # Raising it again keeps its `since`.
    await redis.set(mark_key(settings.stream_key), 0)
    await invariants.check_broker_history(stream, store)
    [again] = await store.alarms()
    assert again.since == alarm.since and again.last_seen > alarm.last_seen


async def test_a_settled_entry_above_the_floor_missing_from_the_stream_raises_the_alarm(
        settings: Settings, stream: Stream, store: Store, redis: Redis) -> None:
    await settled_batch(settings, stream, store)
    high = await store.settled_high()
    assert high is not None and await store.floor() <= high  # no housekeeping ran
    await invariants.check_broker_history(stream, store)
    assert await alarm_kinds(store) == []
    await redis.xdel(settings.stream_key, str(high))
    await invariants.check_broker_history(stream, store)
    [alarm] = await store.alarms()
    assert f"settled position {high} is missing" in alarm.message


async def test_a_broker_log_behind_the_settled_positions_generates_ids_past_them(
        settings: Settings, stream: Stream, store: Store, redis: Redis) -> None:
    await settled_batch(settings, stream, store)
    high = await store.settled_high()
    assert high is not None
    # Everything gone but the mark (the fault the mark alone would not show).
    await redis.delete(settings.stream_key)
    await invariants.check_broker_history(stream, store)
    alarms = {alarm.kind: alarm.message for alarm in await store.alarms()}
    assert set(alarms) == {"broker_history_lost", "group_lost"}  # the group went with it
    assert f"new entries now get ids after {high}" in alarms["broker_history_lost"]
    await stream.publish([b'{"topic": "t", "event_id": "x"}'])
    [(raw_id, _)] = await redis.xrange(settings.stream_key)
    assert StreamId.of_entry(raw_id) > high


async def test_a_first_delivery_below_the_floor_raises_the_alarm_and_counts_nothing_twice(
        settings: Settings, stream: Stream, store: Store, redis: Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    await settled_batch(settings, stream, store)
    before = await balance(store, stream)
    state = await stream.group_state()
    assert state.settled_below is not None
    assert await store.raise_floor(state.settled_below) is not None
    # The group's history goes back (a restore that kept the stream's entries but an older
    # group): every entry is delivered "for the first time" again, all below the floor.
    await redis.xgroup_setid(settings.stream_key, settings.consumer_group, "0")
    worker = consumer(settings, stream, store, "second")
    async with running(worker):
        await eventually(lambda: drained(stream), what="the rewound group drained")
    assert await balance(store, stream) == before
    assert await alarm_kinds(store) == ["broker_history_lost"]
    [raised] = logged(caplog.records, "alarm_raised")
    assert "delivered for the first time below the settled floor" in raised.getMessage()


async def test_a_new_key_first_delivered_below_the_floor_is_still_stored(
        settings: Settings, stream: Stream, store: Store, redis: Redis) -> None:
    await settled_batch(settings, stream, store)
    floor_raised_to = StreamId(2**62, 0)  # far above every id this test's Redis will make
    assert await store.raise_floor(floor_raised_to) is not None
    await publish(stream, [event("brand-new", topic="late")])
    await run_until_drained(settings, stream, store, "late")
    stored = await store.events_page(topic="late", after=None, below=StreamId(2**63 - 1, 0),
                                     limit=10)
    assert [e.event_id for e in stored] == ["brand-new"]
    assert await alarm_kinds(store) == ["broker_history_lost"]


async def test_a_broken_balance_with_nothing_pending_raises_balance_drift(
        settings: Settings, stream: Stream, store: Store, redis: Redis) -> None:
    await settled_batch(settings, stream, store)
    await invariants.check_balance(stream, store)
    assert await alarm_kinds(store) == []
    await redis.incrby(received_key(settings.stream_key), 3)  # counted, never in the stream
    await invariants.check_balance(stream, store)
    [alarm] = await store.alarms()
    assert alarm.kind == "balance_drift"
    assert "received 33 != unique_processed + duplicate_dropped + dead_lettered = 30 " \
           "(off by +3)" in alarm.message
    assert await store.clear_alarm("balance_drift")
    assert await alarm_kinds(store) == []


def test_logagg_alarms_lists_standing_alarms_exits_1_while_any_stands_and_clears_them(
        settings: Settings, sql: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert main(["alarms"]) == 0
    assert capsys.readouterr().out.endswith(f"0 alarm(s) on stream {settings.stream_key!r}\n")
    sql.execute("INSERT INTO alarms (stream, kind, message) SELECT id, 'balance_drift', "
                "'off by +3' FROM streams WHERE name = %s", [settings.stream_key])
    assert main(["alarms", "--json"]) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert orjson.loads(line)["kind"] == "balance_drift"
    assert orjson.loads(line)["message"] == "off by +3"
    assert main(["alarms", "clear", "balance_drift"]) == 0
    assert capsys.readouterr().out == "balance_drift: cleared\n"
    assert main(["alarms"]) == 0


async def test_a_batch_held_past_claim_idle_ms_and_settled_by_others_raises_no_alarm(
        settings: Settings, stream: Stream, store: Store) -> None:
    """Consumer `slow` reads a batch and is held up (PostgreSQL away, a freeze) past
    CLAIM_IDLE_MS; `fast` claims and settles it, and the floor passes it. When `slow` settles
    it at last, below the floor, nothing is wrong: no alarm (the chaos test found this one)."""
    await stream.ensure_group()
    await publish(stream, [event(f"e{i}") for i in range(10)])
    read_at = time.monotonic()
    held = await stream.read_new("slow", 10, 10)
    await run_until_drained(settings, stream, store, "fast", claim_idle_ms=50)
    state = await stream.group_state()
    assert state.settled_below is not None
    assert await store.raise_floor(state.settled_below) is not None
    slow = consumer(settings, stream, store, "slow", claim_idle_ms=50)
    await eventually(lambda: asyncio.sleep(0.01, time.monotonic() - read_at > 0.05),
                     what="the batch older than CLAIM_IDLE_MS")
    await slow.handle(held, asyncio.Event(), read_at=read_at)
    assert await alarm_kinds(store) == []
    # The same batch settled within CLAIM_IDLE_MS of its read is a sign: nobody else could
    # have settled it.
    patient = consumer(settings, stream, store, "slow", claim_idle_ms=60_000)
    await patient.handle(held, asyncio.Event(), read_at=time.monotonic())
    assert await alarm_kinds(store) == ["broker_history_lost"]


@pytest.mark.parametrize(("policy", "alarmed"), [
    ("allkeys-lru", True), ("allkeys-random", True), ("volatile-lru", False),
    ("noeviction", False)])
async def test_a_broker_that_may_evict_the_stream_raises_broker_may_evict(
        settings: Settings, store: Store, scratch: Path, policy: str, alarmed: bool) -> None:
    """A Redis logagg did not start (its own, so the session's is left as it is)."""
    server = RedisServer(scratch / f"evicting-{policy}")
    server.start()
    client = Redis.from_url(server.url)
    try:
        await client.config_set("maxmemory-policy", policy)
        stream = Stream(client, key=settings.stream_key, group=settings.consumer_group)
        await invariants.check_broker_history(stream, store)
        alarms = {alarm.kind: alarm.message for alarm in await store.alarms()}
        assert list(alarms) == (["broker_may_evict"] if alarmed else [])
        if alarmed:
            assert f"maxmemory-policy is {policy}" in alarms["broker_may_evict"]
    finally:
        await client.aclose()
        server.stop()
