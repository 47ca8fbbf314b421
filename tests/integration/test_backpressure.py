"""Backpressure: past MAX_BACKLOG unsettled entries, ingest answers 503 and enqueues nothing."""

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


async def post(client: TestClient[Any, Any], count: int, prefix: str) -> Any:
    body = orjson.dumps([event(f"{prefix}{i}") for i in range(count)])
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
