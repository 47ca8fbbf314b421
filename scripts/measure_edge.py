"""Measure what a hostile request costs the edge (issue 11): validation and `/stats`.

    PYTHONPATH=. .venv/bin/python scripts/measure_edge.py validation
    PYTHONPATH=. .venv/bin/python scripts/measure_edge.py stats [--topics 100000] [--shards 16]
    PYTHONPATH=. .venv/bin/python scripts/measure_edge.py topics [--topics 100000]

`validation` times, for each attack body, the validation step in-process (CPU seconds of
`validation` plus what ingest does with the problems to answer 422) and the whole request
through the real app (aiohttp's TestClient), and gives the answer's size. `stats` fills the
counter shards of a fresh database with that many topics, straight in PostgreSQL, and times
`GET /stats`. `topics` times what MAX_TOPICS costs a publish. Each starts its own Redis and
PostgreSQL on free ports in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import psycopg
from aiohttp.test_utils import TestClient, TestServer

from services.ingest.app import create_app
from services.stack.servers import PostgresServer, RedisServer
from shared import validation
from shared.migrations import migrate
from shared.settings import Settings

EVENT = {"topic": "auth", "event_id": "e", "timestamp": "2026-11-25T10:00:00Z",
         "source": "svc", "payload": {"level": "info"}}


def nested(levels: int, inside: bytes = b"{}") -> bytes:
    """JSON of an object `levels` deep (orjson writes at most 254 levels, reads 1024)."""
    return b'{"a":' * (levels - 1) + inside + b"}" * (levels - 1)


def with_payload(payload: bytes) -> bytes:
    return orjson.dumps(EVENT | {"payload": 0}).replace(b'"payload":0', b'"payload":' + payload)


def attacks() -> dict[str, bytes]:
    """Bodies of at most MAX_BODY_BYTES (5 MiB) and MAX_BATCH_EVENTS (1000) events."""
    wide = orjson.dumps({f"k{i}": 0 for i in range(400_000)} | {"z": "\x00"})
    return {
        # issue 11's: one event of 250,000 unknown top-level fields (2.9 MB)
        "one event, 250k unknown fields": orjson.dumps(
            [EVENT | {f"f{i}": 0 for i in range(250_000)}]),
        # 1000 tiny events, each of 400 unknown fields: 400,000 problems in 5 MB
        "1000 events x 400 unknown fields": orjson.dumps([
            EVENT | {"event_id": str(n)} | {f"f{i}": 0 for i in range(400)}
            for n in range(1000)]),
        # 1000 events, every field of each of the wrong type or missing, plus unknown ones
        "1000 events, every field wrong": orjson.dumps([
            {"topic": [], "event_id": "", "timestamp": "x", "payload": 1, **{
                f"u{i}": i for i in range(300)}} for _ in range(1000)]),
        # known fields holding 1 MB values of the wrong kind: messages quote them
        "known fields of 1 MB values": orjson.dumps([
            {"topic": [0] * 500_000, "event_id": "x" * 1_000_000, "timestamp": "y" * 1_000_000,
             "source": {f"s{i}": 0 for i in range(100_000)}, "payload": "z" * 10}]),
        # 800 events whose payloads nest 1000 levels (too deep: 422)
        "800 payloads nested 1000 levels": b"[" + b",".join(
            [with_payload(nested(1000))] * 800) + b"]",
        # a payload 99 levels deep, then 400,000 keys, then a NUL
        "payload 99 deep, 400k keys, NUL at the end": b"[" + with_payload(nested(99, wide)) +
        b"]",
        # an event that is not an object but a 1M-item array
        "an event that is a 1M-item array": orjson.dumps([[0] * 1_000_000]),
        # an event that is an array nested 1019 levels (JSON parsers stop at 1024)
        "an event that is an array 1019 deep": b"[" * 1020 + b"]" * 1020,
        # a topic that is an array nested 1018 levels
        "a topic that is an array 1018 deep": b'[{"topic":' + b"[" * 1018 + b"]" * 1018 + b"}]",
    }


def cpu(call: Callable[[], Any], rounds: int = 3) -> tuple[float, Any]:
    """The median CPU seconds of `call` over `rounds`, and its last result."""
    times = []
    result = None
    for _ in range(rounds):
        gc.collect()
        started = time.process_time()
        result = call()
        times.append(time.process_time() - started)
    return statistics.median(times), result


def answer_422(events: list[Any]) -> int:
    """What ingest does with the problems: list the first MAX_DETAILS, count the rest (the
    code of services/ingest/bodies.py), and the size of the answer it would send."""
    report = getattr(validation, "report", None)
    if report is not None:
        found = report(events)
        listed, total = found.listed, found.total
    else:
        problems = validation.iter_problems(events)
        listed = list(islice(problems, validation.MAX_DETAILS))
        total = len(listed) + sum(1 for _ in problems)
    body = {"error": "invalid_event", "message": f"{total} problem(s)", "details": listed}
    return len(orjson.dumps(body))


@contextlib.contextmanager
def servers() -> Iterator[tuple[RedisServer, PostgresServer]]:
    with tempfile.TemporaryDirectory(prefix="logagg-measure-") as folder:
        Path(folder).chmod(0o755)
        redis = RedisServer(Path(folder) / "redis")
        postgres = PostgresServer(Path(folder) / "postgres", durable=False)
        redis.start()
        try:
            postgres.start()
            try:
                yield redis, postgres
            finally:
                postgres.stop()
        finally:
            redis.stop()


def settings_for(redis: RedisServer, postgres: PostgresServer, **changes: Any) -> Settings:
    name = f"measure_{uuid.uuid4().hex[:8]}"
    migrate(postgres.url(name))
    return Settings.from_env({}, redis_url=redis.url, database_url=postgres.url(name),
                             stream_key=f"events-{uuid.uuid4().hex[:8]}", metrics_port=0,
                             **changes)


async def timed_requests(settings: Settings, requests: list[tuple[str, str, bytes | None]],
                         rounds: int = 3) -> list[tuple[float, float, int, int]]:
    """(median CPU s, median wall s, status, answer bytes) of each (method, path, body)."""
    results = []
    async with TestClient(TestServer(create_app(settings))) as client:
        for method, path, body in requests:
            cpu_times, wall_times = [], []
            status, size = 0, 0
            for _ in range(rounds):
                gc.collect()
                started, wall = time.process_time(), time.perf_counter()
                if method == "POST":
                    answer = await client.post(path, data=body,
                                               headers={"Content-Type": "application/json"})
                else:
                    answer = await client.get(path)
                raw = await answer.read()
                cpu_times.append(time.process_time() - started)
                wall_times.append(time.perf_counter() - wall)
                status, size = answer.status, len(raw)
            results.append((statistics.median(cpu_times), statistics.median(wall_times),
                            status, size))
    return results


def measure_validation() -> None:
    bodies = attacks()
    print(f"{'attack':45} {'body MB':>8} {'validation s':>12} {'details B':>10} "
          f"{'HTTP cpu s':>10} {'HTTP wall s':>11} {'status':>6} {'answer B':>9}")
    with servers() as (redis, postgres):
        settings = settings_for(redis, postgres)
        raw = bodies
        http = asyncio.run(timed_requests(settings, [("POST", "/publish", raw[name])
                                                     for name in bodies]))
        for (name, body), (http_cpu, http_wall, status, size) in zip(
                bodies.items(), http, strict=True):
            events = orjson.loads(body)
            try:
                seconds, details = cpu(lambda events=events: answer_422(events))
                shown = f"{seconds:12.3f} {details:10}"
            except RecursionError:
                shown = f"{'RecursionError':>23}"
            print(f"{name:45} {len(raw[name]) / 1e6:8.2f} {shown} "
                  f"{http_cpu:10.3f} {http_wall:11.3f} {status:6} {size:9}")


def fill_counters(database_url: str, stream_key: str, topics: int, shards: int) -> None:
    """`topics` topics of distinct volumes, each spread over `shards` counter shards, written
    as the consumers' settling statements would leave them."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("INSERT INTO streams (name) VALUES (%s) RETURNING id",
                           [stream_key]).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO topic_stats (stream, topic, shard, unique_processed, "
            "duplicate_dropped, dead_lettered) "
            "SELECT %(stream)s, 'topic-' || t, s, 1 + (t * 7919) %% 1000, (t * 31) %% 100, 0 "
            "FROM generate_series(1, %(topics)s) AS t, generate_series(0, %(shards)s - 1) AS s",
            {"stream": row[0], "topics": topics, "shards": shards})
        conn.execute("VACUUM ANALYZE topic_stats")


async def fold_all(settings: Settings) -> float | None:
    """Fold every counter shard row, as consumers' housekeeping does, if this code folds;
    return the seconds it took."""
    from shared.clients import TOOL, opened

    async with opened(settings, TOOL) as clients:
        fold = getattr(clients.store, "fold_counters", None)
        if fold is None:
            return None
        started = time.perf_counter()
        while await fold() == 10_000:
            pass
        return time.perf_counter() - started


def measure_stats(topics: int, shards: int) -> None:
    paths = ["/stats", "/stats?topics=0", "/stats?topics=1000"]
    with servers() as (redis, postgres):
        settings = settings_for(redis, postgres)
        started = time.perf_counter()
        fill_counters(settings.database_url, settings.stream_key, topics, shards)
        print(f"filled {topics} topics x {shards} shards in {time.perf_counter() - started:.1f} s")
        print(f"{'request':32} {'cpu s':>7} {'wall s':>7} {'status':>6} {'answer B':>10}")
        for stage in ("", "folded", "vacuumed"):
            if stage == "folded":
                seconds = asyncio.run(fold_all(settings))
                if seconds is None:
                    return
                print(f"folded in {seconds:.1f} s")
            elif stage == "vacuumed":  # what autovacuum does within a minute or so
                with psycopg.connect(settings.database_url, autocommit=True) as conn:
                    conn.execute("VACUUM ANALYZE topic_stats")
                    conn.execute("ANALYZE topic_totals")
            results = asyncio.run(timed_requests(settings, [("GET", path, None)
                                                            for path in paths], rounds=5))
            for path, (cpu_s, wall_s, status, size) in zip(paths, results, strict=True):
                label = f"{path} {stage}"
                print(f"{label:32} {cpu_s:7.3f} {wall_s:7.3f} {status:6} {size:10}")


def measure_topics(topics: int) -> None:
    """What the limit costs: seeding it from a store of `topics` topics (the first new topic
    after an upgrade), a request of known topics, and a refused one."""
    def batch(prefix: str, count: int) -> bytes:
        return orjson.dumps([EVENT | {"event_id": str(n), "topic": f"{prefix}{n + 1}"}
                             for n in range(count)])

    with servers() as (redis, postgres):
        settings = settings_for(redis, postgres, max_topics=topics + 1000)
        fill_counters(settings.database_url, settings.stream_key, topics, 1)
        requests = [("POST", "/publish", batch("new-", 1)),  # seeds the set
                    ("POST", "/publish", batch("topic-", 1000)),  # 1000 known topics
                    ("POST", "/publish", batch("new-", 1000)),  # 999 new ones: admitted
                    ("POST", "/publish", batch("newer-", 1000))]  # past the limit: refused
        results = asyncio.run(timed_requests(settings, requests, rounds=1))
        names = [f"a new topic (seeds the set: {topics} topics)", "1000 events, known topics",
                 "1000 events, 999 new topics", "1000 events, new topics past the limit"]
        print(f"{'request':50} {'cpu s':>7} {'wall s':>7} {'status':>6} {'answer B':>9}")
        for name, (cpu_s, wall_s, status, size) in zip(names, results, strict=True):
            print(f"{name:50} {cpu_s:7.3f} {wall_s:7.3f} {status:6} {size:9}")
        again = asyncio.run(timed_requests(settings, requests[1:2] + requests[3:], rounds=5))
        for name, (cpu_s, wall_s, status, size) in zip(names[1:2] + names[3:], again,
                                                       strict=True):
            print(f"{name + ' (again)':50} {cpu_s:7.3f} {wall_s:7.3f} {status:6} {size:9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["validation", "stats", "topics"])
    parser.add_argument("--topics", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=16)
    args = parser.parse_args()
    if args.what == "validation":
        measure_validation()
    elif args.what == "topics":
        measure_topics(args.topics)
    else:
        measure_stats(args.topics, args.shards)


if __name__ == "__main__":
    main()
