"""Small builders and waits shared by the tests, and the ways integration tests drive consumers.

No test module imports from another test module: what two of them share lives here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from services.consumer.loop import Consumer, decode
from services.ingest.app import create_app
from shared.constants import received_key
from shared.keys import new_secret
from shared.settings import Settings
from shared.store import Settled, Store
from shared.stream import RawEntry, Stream

# The tests' own key, with every scope: created in every test database (the integration
# template, each local stack), and sent by `api_client`.
ADMIN_KEY = new_secret()


def bearer(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def api_client(settings: Settings, key: str | None = ADMIN_KEY) -> TestClient[Any, Any]:
    """A test client of a fresh ingest app, sending `key` (None: no key) on every request."""
    return TestClient(TestServer(create_app(settings)), headers=bearer(key) if key else {})


async def nothing_enqueued(redis: Redis, settings: Settings) -> bool:
    """Whether no event reached the stream, nor its `received` counter."""
    return (await redis.exists(settings.stream_key) == 0 or
            await redis.xlen(settings.stream_key) == 0) and \
        await redis.get(received_key(settings.stream_key)) is None


def event(event_id: str = "e-1", topic: str = "auth", **fields: Any) -> dict[str, Any]:
    """A valid event; keyword arguments replace or add fields."""
    base: dict[str, Any] = {"topic": topic, "event_id": event_id,
                            "timestamp": "2026-11-25T10:00:00Z", "source": "svc-login",
                            "payload": {"level": "info", "message": "user signed in"}}
    base.update(fields)
    return base


def with_duplicates(unique: int, duplicates: int, topics: int = 3,
                    seed: int = 7) -> list[dict[str, Any]]:
    """`unique` distinct events and `duplicates` re-sends of some of them, shuffled."""
    rng = random.Random(seed)
    originals = [event(f"e{i}", topic=f"topic-{i % topics}") for i in range(unique)]
    copies = [rng.choice(originals) for _ in range(duplicates)]
    mixed = originals + copies
    rng.shuffle(mixed)
    return mixed


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0,
                     what: str = "condition") -> None:
    """Poll `check` until it is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within}s")
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------------------------
# Integration tests: the stream, the store and consumers


async def publish(stream: Stream, events: Sequence[dict[str, Any]], batch: int = 100) -> None:
    """Append events as ingest does, `batch` per request."""
    for start in range(0, len(events), batch):
        await stream.publish([orjson.dumps(e) for e in events[start:start + batch]])


async def settle_like_a_consumer(stream: Stream, store: Store, raw: Sequence[RawEntry], *,
                                 ack: bool = True) -> Settled:
    """What a consumer does with entries it read: decode them, settle them in one transaction,
    then ack them. `ack=False` is a consumer that died between its COMMIT and its XACK.
    Every entry must carry an event (a consumer would dead-letter the others)."""
    entries, unreadable = decode(raw)
    assert unreadable == [], "settle_like_a_consumer takes readable entries only"
    settled = await store.settle(entries)
    if ack:
        await stream.ack([raw_id for raw_id, _ in raw])
    return settled


def consumer(settings: Settings, stream: Stream, store: Store, name: str,
             **changes: Any) -> Consumer:
    """A consumer named `name`, with `changes` to the test's settings."""
    return Consumer(dataclasses.replace(settings, consumer_name=name, **changes), stream, store)


@asynccontextmanager
async def running(*consumers: Consumer) -> AsyncIterator[None]:
    """Run the consumers as tasks; on leaving, ask them to stop and wait until they did."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def drained(stream: Stream) -> bool:
    return await stream.pending() == 0


async def run_until_drained(settings: Settings, stream: Stream, store: Store,
                            name: str = "worker", **changes: Any) -> Consumer:
    """Run one consumer until nothing is pending, stop it, and return it (for its totals)."""
    worker = consumer(settings, stream, store, name, **changes)
    async with running(worker):
        await eventually(lambda: drained(stream), what=f"stream drained by {name}")
    return worker


def counts(sql: psycopg.Connection[Any]) -> tuple[int, int, int]:
    """(unique_processed, duplicate_dropped, rows in events)."""
    row = sql.execute("SELECT coalesce(sum(unique_processed), 0), "
                      "coalesce(sum(duplicate_dropped), 0) FROM topic_counts").fetchone()
    rows = sql.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None and rows is not None
    return int(row[0]), int(row[1]), int(rows[0])


async def balance(store: Store, stream: Stream) -> dict[str, int]:
    """The figures of `/stats` that the counting rules tie together."""
    totals = await store.stats()
    return {"received": await stream.received(), "pending": await stream.pending(),
            "unique": totals.total("unique_processed"),
            "duplicate": totals.total("duplicate_dropped"),
            "dead": totals.total("dead_lettered")}


async def waiting_for_locks(sql: psycopg.Connection[Any], count: int) -> bool:
    """Whether `count` backends of this database wait for a lock."""
    await asyncio.sleep(0)
    row = sql.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                      "AND datname = current_database()").fetchone()
    return bool(row and row[0] == count)


def logged(records: Sequence[logging.LogRecord], action: str) -> list[logging.LogRecord]:
    """The log records with this `action`, in the order they were logged."""
    return [r for r in records if getattr(r, "action", None) == action]


# ----------------------------------------------------------------------------------------------
# OTLP (POST /v1/logs)


def otlp_logs(*services: str, records: int = 1, body: str = "order paid") -> bytes:
    """An OTLP `ExportLogsServiceRequest` in protobuf: one resource per service name (its
    `service.name`, the topic), each with `records` log records."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    message = ExportLogsServiceRequest()
    for service in services or ("checkout",):
        resource_logs = message.resource_logs.add()
        resource_logs.resource.attributes.add(key="service.name").value.string_value = service
        scope_logs = resource_logs.scope_logs.add()
        for i in range(records):
            record = scope_logs.log_records.add(time_unix_nano=1_764_064_800_000_000_000 + i)
            record.body.string_value = f"{body} {i}"
    return message.SerializeToString()


def otlp_json(protobuf: bytes) -> bytes:
    """The same request in OTLP's JSON (ids would be hex: these records have none)."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    message = ExportLogsServiceRequest()
    message.ParseFromString(protobuf)
    return orjson.dumps(json_format.MessageToDict(message))
