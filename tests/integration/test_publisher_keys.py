"""`logagg publish`'s sender against the real ingest with AUTH=on: it sends its key, stops at
once on a 401 or 403 (nothing enqueued, nothing retried), and waits out a 429's Retry-After
until every event is in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from services.ingest.app import create_app
from services.ingest.keys import KEYRING
from services.keys import __main__ as keys
from services.publisher.sender import send
from services.publisher.simulator import workload
from shared.settings import Settings
from tests.helpers import ADMIN_KEY, nothing_enqueued


@pytest.fixture
async def ingest(settings: Settings) -> AsyncIterator[TestServer]:
    async with TestServer(create_app(settings)) as server:
        yield server


async def make(settings: Settings, ingest: TestServer, **limits: Any) -> str:
    """A new key, already held by the ingest (rather than within KEYS_REFRESH_MS)."""
    made = await keys.create(settings, "publisher", **limits)
    ring = ingest.app[KEYRING]
    assert ring is not None
    await ring.refresh()
    return made.secret


def url(ingest: TestServer) -> str:
    return str(ingest.make_url(""))


async def test_with_the_key_every_event_is_accepted(ingest: TestServer) -> None:
    report = await send(workload(500, 0.3, ["auth"], seed=1), url=url(ingest), batch=100,
                        concurrency=4, rate=None, key=ADMIN_KEY)
    assert (report.events_accepted, report.retries, report.stopped) == (500, 0, None)


async def test_without_a_key_the_run_stops_at_its_first_401_and_enqueues_nothing(
        ingest: TestServer, redis: Redis, settings: Settings) -> None:
    report = await send(workload(2_000, 0.3, ["auth"], seed=1), url=url(ingest), batch=100,
                        concurrency=4, rate=None, key=None)
    assert report.requests <= 4 and report.retries == 0
    assert (report.events_accepted, report.events_failed) == (0, 2_000)
    assert report.stopped is not None
    assert report.stopped.startswith("401 unauthorized: send the key as `Authorization: Bearer")
    assert "no key was sent" in report.stopped
    assert await nothing_enqueued(redis, settings)


async def test_a_key_without_the_publish_scope_stops_the_run_at_its_first_403(
        ingest: TestServer, redis: Redis, settings: Settings) -> None:
    reader = await make(settings, ingest, scopes=["read"])
    report = await send(workload(2_000, 0.3, ["auth"], seed=1), url=url(ingest), batch=100,
                        concurrency=4, rate=None, key=reader)
    assert report.requests <= 4 and report.retries == 0
    assert report.events_failed == 2_000
    assert report.stopped is not None and report.stopped.startswith("403 forbidden: ")
    assert reader not in report.stopped
    assert await nothing_enqueued(redis, settings)


async def test_over_the_keys_rate_each_429_is_retried_after_its_retry_after_until_all_are_in(
        ingest: TestServer, settings: Settings) -> None:
    # 100 events/s with a burst of 100: the first batch of 100 goes, each other one waits for
    # the bucket to refill (Retry-After: 1).
    limited = await make(settings, ingest, scopes=["publish"], rate=100, burst=100)
    report = await send(workload(300, 0.0, ["auth"], seed=1), url=url(ingest), batch=100,
                        concurrency=1, rate=None, key=limited)
    assert (report.events_accepted, report.events_failed, report.stopped) == (300, 0, None)
    assert report.retries >= 2
    assert report.seconds >= 1.5
