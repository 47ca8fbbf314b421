"""The two ceilings `logagg bench` compares the pipeline with, measured on the same servers in
the same run: the raw set-based dedup insert into PostgreSQL, and raw pipelined XADDs.

Both run over a sample of the workload, its first `SAMPLE_EVENTS` events (all of them in a
smaller run), not the whole run: what they cost in time and memory stays the same whatever the
number of events the pipeline is sent."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from redis.asyncio import Redis

from shared.constants import EVENT_FIELD
from shared.paths import SQL_DIR
from shared.sql import queries

SAMPLE_EVENTS = 100_000
PG_BATCH = 500
XADD_BATCH = 100
CEILING_DATABASE = "logagg_bench_ceiling"


def postgres_ceiling(database_url: str, events: Sequence[bytes]) -> float:
    """Events per second through the raw dedup insert: 1 writer, batches of 500, binary
    parameters, fresh tables, in a database of its own on the same server."""
    url = _fresh_database(database_url)
    bench_sql = queries(SQL_DIR / "bench.sql")
    columns = _columns(events)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(bench_sql["create_tables"].encode())
        started = time.perf_counter()
        for start in range(0, len(events), PG_BATCH):
            with conn.transaction():
                conn.execute(bench_sql["insert_batch"],
                             [column[start:start + PG_BATCH] for column in columns])
        seconds = time.perf_counter() - started
    return len(events) / seconds


def _columns(events: Sequence[bytes]) -> list[list[str]]:
    """The insert's five array parameters, decoding one event at a time (no list of dicts)."""
    columns: list[list[str]] = [[], [], [], [], []]
    topics, ids, stamps, sources, payloads = columns
    for raw in events:
        event: dict[str, Any] = orjson.loads(raw)
        topics.append(event["topic"])
        ids.append(event["event_id"])
        stamps.append(event["timestamp"])
        sources.append(event["source"])
        payloads.append(orjson.dumps(event["payload"]).decode())
    return columns


def _fresh_database(database_url: str) -> str:
    with psycopg.connect(make_conninfo(database_url, dbname="postgres"),
                         autocommit=True) as conn:
        name = sql.Identifier(CEILING_DATABASE)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return make_conninfo(database_url, dbname=CEILING_DATABASE)


async def xadd_ceiling(redis_url: str, events: Sequence[bytes]) -> float:
    """Events per second through raw XADDs pipelined 100 at a time, into a scratch stream."""
    key = "logagg-bench-ceiling"
    redis = Redis.from_url(redis_url)
    try:
        await redis.delete(key)
        started = time.perf_counter()
        for start in range(0, len(events), XADD_BATCH):
            pipe = redis.pipeline(transaction=False)
            for event in events[start:start + XADD_BATCH]:
                pipe.xadd(key, {EVENT_FIELD: event})
            await pipe.execute()
        seconds = time.perf_counter() - started
        await redis.delete(key)
    finally:
        await redis.aclose()
    return len(events) / seconds
