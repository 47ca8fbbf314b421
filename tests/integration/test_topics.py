"""MAX_TOPICS: a limit on distinct topics, held by every ingest process sharing one Redis, and
seeded from the store (services/ingest/topics.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.stack.servers import free_port
from shared.constants import received_key, topics_key
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import (
    api_client,
    event,
    eventually,
    logged,
    publish,
    run_until_drained,
    waiting_for_locks,
)

Client = TestClient[Any, Any]


@asynccontextmanager
async def ingest(settings: Settings, **changes: Any) -> AsyncIterator[Client]:
    """An ingest process of its own (its own memory of admitted topics), on the shared Redis."""
    async with api_client(dataclasses.replace(settings, **changes)) as client:
        yield client


async def post(client: Client, events: list[dict[str, Any]]) -> tuple[int, Any]:
    answer = await client.post("/publish", data=io.BytesIO(orjson.dumps(events)),
                               headers={"Content-Type": "application/json"})
    return answer.status, await answer.json()


async def admitted(redis: Redis, settings: Settings) -> set[str]:
    """The set's topics, without its seed mark ''."""
    return {member.decode() for member in await redis.smembers(topics_key(settings.stream_key))
            } - {""}


async def enqueued(redis: Redis, settings: Settings) -> tuple[int, int]:
    return (int(await redis.xlen(settings.stream_key)),
            int(await redis.get(received_key(settings.stream_key)) or 0))


async def test_new_topics_are_admitted_up_to_the_limit_and_past_it_refused_with_nothing_enqueued(
        settings: Settings, redis: Redis) -> None:
    async with ingest(settings, max_topics=3) as client:
        assert (await post(client, [event("a", topic="t1"), event("b", topic="t2")]))[0] == 202
        status, refusal = await post(client, [
            event("c", topic="t1"), event("d", topic="t3"), event("e", topic="t4"),
            event("f", topic="t2"), event("g", topic="t4")])
        assert status == 422
        assert refusal["error"] == "too_many_topics"
        assert [(d["index"], d["path"]) for d in refusal["details"]] == [
            (1, "/topic"), (2, "/topic"), (4, "/topic")]
        assert "'t3'" in refusal["details"][0]["message"]
        assert refusal["message"].startswith("3 of 5 events carry 2 new topic(s), and 2 of "
                                             "MAX_TOPICS (3) are admitted")
        # All or none: t3 alone would have fitted, and was not admitted with t4.
        assert await admitted(redis, settings) == {"t1", "t2"}
        assert await enqueued(redis, settings) == (2, 2)
        assert (await post(client, [event("h", topic="t3")]))[0] == 202
        assert (await post(client, [event("i", topic="t4")]))[0] == 422
        assert (await post(client, [event("j", topic="t1"), event("k", topic="t3")]))[0] == 202
    assert await admitted(redis, settings) == {"t1", "t2", "t3"}
    assert await enqueued(redis, settings) == (5, 5)


async def test_the_details_of_a_refusal_are_capped_and_counted(
        settings: Settings, redis: Redis) -> None:
    async with ingest(settings, max_topics=1) as client:
        status, refusal = await post(client, [event(str(i), topic=f"t{i}") for i in range(300)])
    assert status == 422
    assert len(refusal["details"]) == 100
    assert "300 of 300 events carry 300 new topic(s)" in refusal["message"]
    assert "the first 100 are listed" in refusal["message"]
    assert await enqueued(redis, settings) == (0, 0)


async def test_two_ingest_processes_admitting_at_once_never_take_the_set_past_the_limit(
        settings: Settings, redis: Redis) -> None:
    async with ingest(settings, max_topics=10) as one, ingest(settings, max_topics=10) as two:
        answers = await asyncio.gather(*(
            post(one if n % 2 else two, [event(f"{n}", topic=f"t{n}"),
                                         event(f"{n}b", topic=f"t{n}-b")])
            for n in range(20)))
    # Two new topics a request: 5 requests fill the 10, whichever process took them.
    assert sorted(status for status, _ in answers) == [202] * 5 + [422] * 15
    assert len(await admitted(redis, settings)) == 10
    assert await enqueued(redis, settings) == (10, 10)


async def test_known_topics_cost_no_round_trip_to_the_set(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[set[str]] = []
    real = Stream.admit_topics

    async def counting(self: Stream, topics: Any, **kwargs: Any) -> Any:
        asked.append(set(topics))
        return await real(self, topics, **kwargs)

    monkeypatch.setattr(Stream, "admit_topics", counting)
    async with ingest(settings, max_topics=100) as client:
        for n in range(5):
            assert (await post(client, [event(f"{n}", topic="auth"),
                                        event(f"{n}", topic="billing")]))[0] == 202
        assert (await post(client, [event("x", topic="auth"), event("x", topic="new")]))[0] == 202
    # The first request found the set unseeded, seeded it and asked again; then only "new".
    assert asked == [{"auth", "billing"}, {"auth", "billing"}, {"new"}]


async def test_the_set_starts_from_the_topics_the_store_counts(
        settings: Settings, stream: Stream, store: Store, redis: Redis) -> None:
    """A deployment older than the limit: its topics are in the store, not in Redis."""
    await publish(stream, [event(str(n), topic=f"old-{n}") for n in range(4)])
    await run_until_drained(settings, stream, store)
    await redis.delete(topics_key(settings.stream_key))
    async with ingest(settings, max_topics=5) as client:
        assert (await post(client, [event("a", topic="new-1")]))[0] == 202
        assert await admitted(redis, settings) == {"old-0", "old-1", "old-2", "old-3", "new-1"}
        assert (await post(client, [event("b", topic="new-2")]))[0] == 422
        assert (await post(client, [event("c", topic="old-2")]))[0] == 202


async def test_a_topic_the_store_counts_is_put_back_when_redis_forgot_it_never_refused(
        settings: Settings, stream: Stream, store: Store, redis: Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis restored from an older file: the set lost topics admitted since, and new ones
    took their places. A lost topic that comes back is known to the store: it is admitted,
    past the limit, rather than refused."""
    await publish(stream, [event("1", topic="kept"), event("2", topic="lost")])
    await run_until_drained(settings, stream, store)
    async with ingest(settings, max_topics=2) as client:
        assert (await post(client, [event("3", topic="kept")]))[0] == 202  # seeds the set
        await redis.srem(topics_key(settings.stream_key), "lost")  # the restore
        assert (await post(client, [event("4", topic="newcomer")]))[0] == 202
        with caplog.at_level(logging.WARNING, logger="services.ingest.topics"):
            assert (await post(client, [event("5", topic="lost")]))[0] == 202
        assert logged(caplog.records, "topics_put_back")
        assert (await post(client, [event("6", topic="another")]))[0] == 422
    assert await admitted(redis, settings) == {"kept", "lost", "newcomer"}


async def test_while_the_store_is_down_an_unseeded_set_is_counted_as_it_is(
        settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/logagg"
    with caplog.at_level(logging.WARNING, logger="services.ingest.topics"):
        # Without keys: an ingest started with the store down has none (503 keys_unavailable).
        async with ingest(settings, max_topics=1, database_url=down, auth="off") as client:
            assert (await post(client, [event("a", topic="first")]))[0] == 202
            # The set is full; whether "second" is a topic the store counts, only the store
            # can say, and it does not answer: try again later.
            status, refusal = await post(client, [event("b", topic="second")])
            assert (status, refusal["error"]) == (503, "store_unavailable")
    assert logged(caplog.records, "topics_unseeded")
    assert await admitted(redis, settings) == {"first"}
    assert await enqueued(redis, settings) == (1, 1)


async def test_with_no_limit_any_number_of_topics_is_accepted_and_the_set_left_unseeded(
        settings: Settings, redis: Redis) -> None:
    async with ingest(settings, max_topics=2) as client:
        assert (await post(client, [event("a", topic="t1")]))[0] == 202
    assert await redis.sismember(topics_key(settings.stream_key), "")
    async with ingest(settings, max_topics=0) as client:
        for n in range(5):
            assert (await post(client, [event(str(n), topic=f"u{n}")]))[0] == 202
    assert not await redis.sismember(topics_key(settings.stream_key), "")
    assert await admitted(redis, settings) == {"t1"}
    assert await enqueued(redis, settings) == (6, 6)


async def test_seeding_reads_the_folded_counters_and_the_recent_ones(
        settings: Settings, store: Store, sql: psycopg.Connection[Any]) -> None:
    stream_id = await store.stream_id()
    sql.execute("INSERT INTO topic_stats (stream, topic, shard, unique_processed) VALUES "
                "(%(s)s, 'folded', 0, 1), (%(s)s, '', 0, 1), (%(s)s, 'both', 1, 1)",
                {"s": stream_id})
    assert await store.fold_counters() == 3
    sql.execute("INSERT INTO topic_stats (stream, topic, shard, unique_processed) VALUES "
                "(%(s)s, 'recent', 0, 1), (%(s)s, 'both', 2, 1)", {"s": stream_id})
    assert sorted(await store.topics()) == ["both", "folded", "recent"]
    assert await store.counted_topics(["recent", "folded", "nope", ""]) == {"recent", "folded"}


async def test_a_stream_made_by_another_process_meanwhile_is_found_not_missed(
        store: Store, sql: psycopg.Connection[Any], database_url: str) -> None:
    """Two ingest processes seeding a new stream's topics at once both ask for its id: the one
    whose insert waited for the other's found no row in its statement's snapshot (an
    AssertionError, a 500), and now asks again."""
    racing = Store(store.pool, "racing")
    async with await psycopg.AsyncConnection.connect(database_url) as other:
        await other.execute("INSERT INTO streams (name) VALUES ('racing')")
        finding = asyncio.create_task(racing.stream_id())
        await eventually(lambda: waiting_for_locks(sql, 1), what="the insert waits")
        await other.commit()
        found = await finding
    assert sql.execute("SELECT id FROM streams WHERE name = 'racing'").fetchone() == (found,)


async def test_a_request_of_thousands_of_new_topics_is_admitted_or_refused_whole(
        settings: Settings, redis: Redis) -> None:
    """Lua's unpack() stops at a few thousand values: the script takes them in parts."""
    many = [event(str(n), topic=f"t{n}") for n in range(9_000)]
    async with ingest(settings, max_topics=9_000, max_batch_events=10_000) as client:
        assert (await post(client, [*many[:8_999], event("x", topic="t0")]))[0] == 202
        assert (await post(client, [event("y", topic=f"u{n}") for n in range(9_000)]))[0] == 422
    assert len(await admitted(redis, settings)) == 8_999
