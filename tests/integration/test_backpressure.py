"""Backpressure: past MAX_BACKLOG unsettled entries, or MAX_BACKLOG_BYTES of stream memory,
ingest answers 503 and enqueues nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import api_client, event, eventually, run_until_drained


async def post(client: TestClient[Any, Any], count: int, prefix: str, pad: int = 0) -> Any:
    events = [event(f"{prefix}{i}") for i in range(count)]
    for one in events:
        one["payload"]["pad"] = "x" * pad
    body = orjson.dumps(events)
    return await client.post("/publish", data=body, headers={"Content-Type": "application/json"})


async def test_ingest_answers_503_while_the_backlog_is_over_its_limit_then_accepts_again(
        settings: Settings, stream: Stream, store: Store, redis: Redis) -> None:
    limited = dataclasses.replace(settings, max_backlog=10)
    async with api_client(limited) as client:
        assert (await post(client, 8, "a")).status == 202
        refused = await post(client, 3, "b")
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "2"
        assert (await refused.json())["error"] == "backlog_full"
        assert await redis.xlen(settings.stream_key) == 8
        assert await stream.received() == 8

        await run_until_drained(settings, stream, store)

        async def accepted() -> bool:
            return bool((await post(client, 3, "c")).status == 202)

        await eventually(accepted, what="publish accepted again")
    assert await stream.received() == 11


async def test_no_limit_when_max_backlog_is_zero(settings: Settings, redis: Redis) -> None:
    unlimited = dataclasses.replace(settings, max_backlog=0)
    async with api_client(unlimited) as client:
        for batch in range(3):
            assert (await post(client, 500, f"{batch}-")).status == 202
    assert await redis.xlen(settings.stream_key) == 1500


async def test_ingest_answers_503_while_the_stream_s_memory_is_over_max_backlog_bytes(
        settings: Settings, stream: Stream, store: Store, redis: Redis) -> None:
    """Five events of about 2 KB fit under 16 KiB, five more would not: refused, nothing of
    them enqueued; once the backlog is settled and trimmed, events are accepted again."""
    limited = dataclasses.replace(settings, max_backlog=0, max_backlog_bytes=16 * 1024)
    async with api_client(limited) as client:
        assert (await post(client, 5, "a", pad=2000)).status == 202
        assert await redis.memory_usage(settings.stream_key) > 5 * 2000
        refused = await post(client, 5, "b", pad=2000)
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "2"
        assert (await refused.json())["error"] == "backlog_full"
        assert "MAX_BACKLOG_BYTES" in (await refused.json())["message"]
        assert await redis.xlen(settings.stream_key) == 5
        assert await stream.received() == 5

        await run_until_drained(settings, stream, store)
        await stream.trim_settled()  # as housekeeping does every 5 s

        async def accepted() -> bool:
            return bool((await post(client, 5, "c", pad=2000)).status == 202)

        await eventually(accepted, what="publish accepted again")
    assert await stream.received() == 10


async def test_metrics_show_the_stream_s_memory(
        settings: Settings, redis: Redis) -> None:
    async with api_client(settings) as client:
        assert (await post(client, 5, "a", pad=2000)).status == 202
        text = await (await client.get("/metrics")).text()
    [line] = [line for line in text.splitlines()
              if line.startswith("logagg_stream_memory_bytes ")]
    assert float(line.split()[1]) == await redis.memory_usage(settings.stream_key)
