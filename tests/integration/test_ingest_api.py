"""Every status code of SPEC §3, produced through the real app on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.consumer.loop import Consumer
from services.stack.servers import free_port
from shared import store as store_module
from shared import validation
from shared.constants import EVENT_FIELD, received_key
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import (
    api_client,
    event,
    eventually,
    nothing_enqueued,
    settle_like_a_consumer,
)

Client = TestClient[Any, Any]


async def post(client: Client, body: Any, **kwargs: Any) -> Any:
    return await client.post("/publish", data=orjson.dumps(body),
                             headers={"Content-Type": "application/json"}, **kwargs)


@pytest.mark.parametrize("body", [
    event("one"),
    [event("one"), event("two")],
    {"events": [event("one"), event("two")]},
], ids=["single event", "array", "envelope"])
async def test_publish_accepts_each_body_shape_with_202(
        client: Client, redis: Redis, settings: Settings, body: Any) -> None:
    answer = await post(client, body)
    count = 1 if isinstance(body, dict) and "events" not in body else 2
    assert answer.status == 202
    assert await answer.json() == {"accepted": count}
    assert await redis.xlen(settings.stream_key) == count
    assert int(await redis.get(received_key(settings.stream_key))) == count


async def test_publish_accepts_json_with_a_charset(client: Client) -> None:
    answer = await client.post("/publish", data=orjson.dumps(event()),
                               headers={"Content-Type": "application/json; charset=utf-8"})
    assert answer.status == 202


async def test_malformed_json_is_a_400_that_enqueues_nothing(
        client: Client, redis: Redis, settings: Settings) -> None:
    answer = await client.post("/publish", data=b'{"topic": "auth",',
                               headers={"Content-Type": "application/json"})
    body = await answer.json()
    assert answer.status == 400
    assert body["error"] == "invalid_json"
    assert set(body) == {"error", "message", "details"}
    assert await nothing_enqueued(redis, settings)


@pytest.mark.parametrize("body", ["text", 42, None, [], {"events": []},
                                  {"events": {"topic": "x"}}, {"events": [], "extra": 1}])
async def test_a_body_of_the_wrong_shape_is_a_400(client: Client, body: Any) -> None:
    answer = await post(client, body)
    assert answer.status == 400
    assert (await answer.json())["error"] == "invalid_body"


async def test_a_body_that_is_not_json_is_a_415(
        client: Client, redis: Redis, settings: Settings) -> None:
    answer = await client.post("/publish", data=orjson.dumps(event()),
                               headers={"Content-Type": "text/plain"})
    assert answer.status == 415
    assert (await answer.json())["error"] == "unsupported_media_type"
    assert await nothing_enqueued(redis, settings)


async def test_more_events_than_max_batch_events_is_a_413_that_enqueues_nothing(
        settings: Settings, redis: Redis) -> None:
    small = dataclasses.replace(settings, max_batch_events=3)
    async with api_client(small) as client:
        answer = await post(client, [event(str(i)) for i in range(4)])
        assert answer.status == 413
        assert (await answer.json())["error"] == "too_many_events"
        assert (await post(client, [event(str(i)) for i in range(3)])).status == 202
    assert await redis.xlen(settings.stream_key) == 3


async def test_a_body_over_max_body_bytes_is_a_413(settings: Settings, redis: Redis) -> None:
    small = dataclasses.replace(settings, max_body_bytes=1000)
    big = event(payload={"blob": "x" * 2000})
    async with api_client(small) as client:
        answer = await post(client, big)
        assert answer.status == 413
        assert (await answer.json())["error"] == "body_too_large"
        # Without a Content-Length the limit still holds, while the body streams in.
        async def chunks() -> Any:
            yield orjson.dumps(big)
        answer = await client.post("/publish", data=chunks(),
                                   headers={"Content-Type": "application/json"})
        assert answer.status == 413
    assert await nothing_enqueued(redis, settings)


def sized(event_id: str, size: int) -> dict[str, Any]:
    """An event whose compact JSON (as the stream keeps it) is exactly `size` bytes."""
    base = event(event_id, payload={"blob": ""})
    return event(event_id, payload={"blob": "x" * (size - len(orjson.dumps(base)))})


async def test_an_event_over_max_event_bytes_is_a_413_naming_it_that_enqueues_nothing(
        settings: Settings, redis: Redis) -> None:
    limit = 1000
    small = dataclasses.replace(settings, max_event_bytes=limit)
    body = [sized("fits", limit), sized("over", limit + 1), event("tiny"),
            sized("far-over", 3 * limit)]
    async with api_client(small) as client:
        answer = await post(client, body)
        refusal = await answer.json()
        assert answer.status == 413
        assert refusal["error"] == "event_too_large"
        assert [(p["index"], p["path"]) for p in refusal["details"]] == [(1, ""), (3, "")]
        assert f"{limit + 1} bytes" in refusal["details"][0]["message"]
        assert await nothing_enqueued(redis, settings)
        # What counts is the event as the stream keeps it: compact JSON, whatever spaces and
        # escapes the client sent (here the event at the limit, indented and escaped).
        loose = orjson.dumps(sized("fits", limit), option=orjson.OPT_INDENT_2)
        loose = loose.replace(b'"fits"', b'"\\u0066its"')
        assert len(loose) > limit
        answer = await client.post("/publish", data=loose,
                                   headers={"Content-Type": "application/json"})
        assert answer.status == 202
    stored = await redis.xrange(settings.stream_key) or []
    assert [fields for _, fields in stored] == [{EVENT_FIELD: orjson.dumps(sized("fits", limit))}]


async def test_a_schema_violation_is_a_422_naming_each_bad_event_and_field(
        client: Client, redis: Redis, settings: Settings) -> None:
    body = [event("ok"), event("bad-1", timestamp="yesterday"),
            event("bad-2", payload=[1]), event("ok-2", extra=True)]
    answer = await post(client, body)
    problems = (await answer.json())["details"]
    assert answer.status == 422
    assert [(p["index"], p["path"]) for p in problems] == [
        (1, "/timestamp"), (2, "/payload"), (3, "/extra")]
    assert all(p["message"] for p in problems)
    assert await nothing_enqueued(redis, settings)


async def test_a_422_lists_the_first_problems_and_counts_them_all_whatever_the_body_holds(
        client: Client, redis: Redis, settings: Settings) -> None:
    """An event with 250,000 unknown fields (2.9 MB of JSON) is 250,000 problems: the answer
    lists the first MAX_DETAILS and says how many there are; it was 20 MB."""
    hostile = event("wide") | {f"f{i}": 0 for i in range(250_000)}
    body = io.BytesIO(orjson.dumps([event("ok"), hostile, event("bad", timestamp="yesterday")]))
    answer = await client.post("/publish", data=body,
                               headers={"Content-Type": "application/json"})
    assert answer.status == 422
    raw = await answer.read()
    assert len(raw) < 20_000
    problems = (await answer.json())["details"]
    assert len(problems) == validation.MAX_DETAILS
    assert [(p["index"], p["path"]) for p in problems[:2]] == [(1, "/f0"), (1, "/f1")]
    message = (await answer.json())["message"]
    assert message == ("2 of 3 events failed validation, 250001 problem(s); the first 100 are "
                       "listed; none was accepted")
    assert await nothing_enqueued(redis, settings)


@pytest.mark.parametrize("body", [
    orjson.dumps([event(str(n)) | {f"f{i}": 0 for i in range(400)} for n in range(1000)]),
    orjson.dumps([event(topic=[0] * 400_000, event_id="x" * 1_000_000,
                        source={f"k{i}": i for i in range(100_000)})]),
    orjson.dumps([event(**{"x" * 1_000_000: 1})]),
    b"[" * 1020 + b"]" * 1020,
    b'{"topic":' + b"[" * 1020 + b"]" * 1020 + b"}",
], ids=["1000-events-of-400-unknown-fields", "megabyte-values", "megabyte-field-name",
        "array-event-1019-deep", "topic-1020-deep"])
async def test_a_422_stays_small_whatever_the_values_it_quotes(
        client: Client, redis: Redis, settings: Settings, body: bytes) -> None:
    """Messages quote the values they are about, and paths name the fields: both are cut to
    validation.MAX_TEXT characters (a megabyte value made a megabyte message; an array nested
    a thousand deep made a 500, Python's repr running out of stack)."""
    answer = await client.post("/publish", data=io.BytesIO(body),
                               headers={"Content-Type": "application/json"})
    assert answer.status == 422
    assert len(await answer.read()) < 2 * validation.MAX_DETAILS * validation.MAX_TEXT
    assert await nothing_enqueued(redis, settings)


async def test_publish_answers_503_with_retry_after_when_redis_is_unreachable(
        settings: Settings) -> None:
    down = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with api_client(down) as client:
        answer = await post(client, event())
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "1"
        assert (await answer.json())["error"] == "broker_unavailable"


async def test_events_lists_stored_events_oldest_first_in_pages(
        client: Client, stream: Stream, store: Store) -> None:
    await stream.ensure_group()
    for i in range(5):
        await stream.publish([orjson.dumps(event(f"e{i}", topic="auth" if i % 2 else "billing"))])
    await settle_like_a_consumer(stream, store, await stream.read_new("c", 10, 10))

    first = await (await client.get("/events", params={"limit": "2"})).json()
    assert [e["event_id"] for e in first["events"]] == ["e0", "e1"]
    assert first["next"]
    second = await (await client.get("/events", params={"limit": "2", "after": first["next"]})
                    ).json()
    assert [e["event_id"] for e in second["events"]] == ["e2", "e3"]
    last = await (await client.get("/events", params={"limit": "2", "after": second["next"]})
                  ).json()
    assert [e["event_id"] for e in last["events"]] == ["e4"]
    assert last["next"] is None
    auth = await (await client.get("/events", params={"topic": "auth"})).json()
    assert [e["event_id"] for e in auth["events"]] == ["e1", "e3"]
    stored = first["events"][0]
    assert set(stored) == {"topic", "event_id", "timestamp", "source", "payload", "received_at"}
    assert stored["timestamp"] == "2026-11-25T10:00:00Z"
    assert stored["payload"] == event()["payload"]


async def test_events_pages_stop_below_an_entry_in_flight_so_a_cursor_never_skips_it(
        client: Client, stream: Stream, store: Store) -> None:
    """Consumer `slow` holds e0-e2, unsettled, while `fast` settles e3-e5. A page showing
    e3-e5 would hand out a cursor past e0-e2, which commit later: never seen by that reader."""
    await stream.ensure_group()
    await stream.publish([orjson.dumps(event(f"e{i}")) for i in range(6)])
    held = await stream.read_new("slow", 3, 10)
    await settle_like_a_consumer(stream, store, await stream.read_new("fast", 3, 10))

    async def page(after: str | None = None) -> Any:
        params = {"limit": "3", **({"after": after} if after else {})}
        return await (await client.get("/events", params=params)).json()

    assert await page() == {"events": [], "next": None}  # e3-e5 wait for e0-e2
    await settle_like_a_consumer(stream, store, held)
    first = await page()
    assert [e["event_id"] for e in first["events"]] == ["e0", "e1", "e2"]
    assert [e["event_id"] for e in (await page(first["next"]))["events"]] == ["e3", "e4", "e5"]


@pytest.mark.parametrize("query", [
    {"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"limit": "-1"},
    {"after": "not-a-cursor"}, {"topic": ""}, {"topic": "x" * 256}, {"sort": "desc"},
])
async def test_events_rejects_a_bad_parameter_with_400(
        client: Client, query: dict[str, str]) -> None:
    answer = await client.get("/events", params=query)
    body = await answer.json()
    assert answer.status == 400
    assert body["error"] == "invalid_parameter"
    assert body["details"][0]["parameter"] == next(iter(query))


# A known workload: a duplicate in `auth`, two in `billing`, and one event the database refuses
# (a rule of the test's own database), which becomes a dead letter.
REFUSED_SOURCE = "refused-by-policy"
WORKLOAD = [event("a", topic="auth"), event("a", topic="auth"), event("b", topic="auth"),
            event("c", topic="billing"), event("c", topic="billing"),
            event("c", topic="billing"), event("x", topic="billing", source=REFUSED_SOURCE)]


async def stats_without_uptime(client: Client) -> dict[str, Any]:
    answer = await client.get("/stats")
    assert answer.status == 200
    stats: dict[str, Any] = await answer.json()
    uptime = stats.pop("uptime_seconds")
    assert isinstance(uptime, float | int) and uptime >= 0
    return stats


async def settle_all(settings: Settings, stream: Stream, store: Store) -> None:
    """Run the real consumer until nothing is pending, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(Consumer(settings, stream, store).run(stop))

    async def settled() -> bool:
        if task.done():
            task.result()  # a consumer that died says why
        return await stream.pending() == 0

    try:
        await eventually(settled, what="the workload settled")
    finally:
        stop.set()
        await task


async def test_stats_gives_every_counter_and_each_topic_exactly(
        client: Client, settings: Settings, stream: Stream, store: Store,
        sql: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    sql.execute(f"ALTER TABLE events ADD CONSTRAINT refuse CHECK (source <> '{REFUSED_SOURCE}')")
    # Every transaction adds to the next counter shard but 0, so that /stats must sum them all.
    shards = itertools.cycle(range(1, 16))
    monkeypatch.setattr(store_module, "_shard", lambda: next(shards))

    answer = await post(client, WORKLOAD)
    assert (answer.status, await answer.json()) == (202, {"accepted": 7})
    assert await stats_without_uptime(client) == {
        "received": 7, "unique_processed": 0, "duplicate_dropped": 0, "dead_lettered": 0,
        "pending": 7, "topics": {}, "topics_total": 0, "alarms": []}  # nothing delivered

    worker = dataclasses.replace(settings, consumer_name="worker", max_deliveries=1)
    await stream.ensure_group()
    assert len(await stream.read_new(worker.consumer_name, 3, 10)) == 3
    state = await stream.group_state()
    assert (state.unacked, state.lag) == (3, 4)
    assert (await stats_without_uptime(client))["pending"] == 7

    await settle_all(worker, stream, store)
    assert await stats_without_uptime(client) == {
        "received": 7, "unique_processed": 3, "duplicate_dropped": 3, "dead_lettered": 1,
        "pending": 0,
        "topics": {"auth": {"unique_processed": 2, "duplicate_dropped": 1},
                   "billing": {"unique_processed": 1, "duplicate_dropped": 2}},
        "topics_total": 2, "alarms": []}


async def test_healthz_readyz_and_metrics_answer_200(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"redis": "ok", "postgres": "ok"}
    await post(client, event())
    metrics = await client.get("/metrics")
    text = await metrics.text()
    assert metrics.status == 200
    assert metrics.content_type == "text/plain"
    assert "logagg_events_accepted_total" in text
    assert 'logagg_http_requests_total{route="/publish",status="202"}' in text


async def test_readyz_is_503_when_postgresql_is_unreachable(settings: Settings) -> None:
    down = dataclasses.replace(
        settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/logagg")
    async with api_client(down) as client:
        answer = await client.get("/readyz")
        body = await answer.json()
        assert answer.status == 503
        assert body["checks"]["redis"] == "ok"
        assert body["checks"]["postgres"].startswith("unavailable")
        assert (await client.get("/stats")).status == 503
        assert (await client.get("/events")).status == 503


async def test_unknown_routes_and_methods_get_json_errors(client: Client) -> None:
    missing = await client.get("/nope")
    assert missing.status == 404
    assert (await missing.json())["error"] == "not_found"
    wrong = await client.get("/publish")
    assert wrong.status == 405
    assert (await wrong.json())["error"] == "method_not_allowed"
