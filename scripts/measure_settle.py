"""Measure what settling costs, alone: the consumer's CPU and PostgreSQL's per event through
`Store.settle`, without ingest, Redis or other processes competing for the cores.

    PYTHONPATH=. .venv/bin/python scripts/measure_settle.py [--events 30000] [--batch 150]
                                                             [--rounds 3]

On a shared machine `logagg bench` moves by ±20% between runs today; this isolates the settling
step, so that a change to it can be compared run against run (interleave the two versions from
separate worktrees, and compare the lowest figure of each). Starts PostgreSQL (fsync off) and
Redis on free ports in a temporary folder; each round settles the same seeded workload (30%
duplicates of recent keys, UUIDv7-like ids, eight topics) in batches of `--batch` into a fresh
database, one batch at a time, and reads this process's CPU time and that of every PostgreSQL
process (/proc/<pid>/stat) before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from pathlib import Path

import orjson

from scripts.measure_edge import servers, settings_for
from services.bench.probes import children, cpu_seconds
from shared.clients import CONSUMER, opened
from shared.constants import EVENT_FIELD
from shared.entries import Entry


def postgres_cpu_seconds(data_dir: Path) -> float:
    """The postmaster's CPU time and that of every process it started."""
    postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    return sum(map(cpu_seconds, [postmaster, *children(postmaster)]))


def workload(events: int, seed: int = 2026) -> list[Entry]:
    rng = random.Random(seed)
    keys: list[str] = []
    entries = []
    ms = 1_790_000_000_000
    for i in range(events):
        if keys and rng.random() < 0.3:
            event_id = rng.choice(keys[-5000:])
        else:
            event_id = str(uuid.UUID(int=(ms << 80) | rng.getrandbits(80)))
            keys.append(event_id)
        ms += rng.randint(0, 1)
        raw = orjson.dumps({"topic": f"topic-{i % 8}", "event_id": event_id,
                            "timestamp": "2026-11-25T10:00:00.123456Z", "source": "pod-7",
                            "payload": {"level": "info", "n": i,
                                        "message": f"user {i} logged in from 10.0.0.7"}})
        entries.append(Entry.decode(f"{ms}-{i}".encode(), {EVENT_FIELD: raw}))
    return entries


async def settle_round(entries: list[Entry], batch: int) -> tuple[float, float, float]:
    """(consumer CPU, PostgreSQL CPU, wall) seconds to settle the entries, a fresh database."""
    with servers() as (redis, postgres):
        settings = settings_for(redis, postgres)
        async with opened(settings, CONSUMER) as clients:
            await clients.store.settle(entries[:batch])  # the stream's row, the plans
            before = (time.process_time(), postgres_cpu_seconds(postgres.data_dir),
                      time.perf_counter())
            for start in range(batch, len(entries), batch):
                await clients.store.settle(entries[start:start + batch])
            after = (time.process_time(), postgres_cpu_seconds(postgres.data_dir),
                     time.perf_counter())
    spent = [end - begin for begin, end in zip(before, after, strict=True)]
    return spent[0], spent[1], spent[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    entries = workload(args.events)
    settled = args.events - args.batch
    figures = [asyncio.run(settle_round(entries, args.batch)) for _ in range(args.rounds)]
    print(f"{args.rounds} rounds of {args.events} events in batches of {args.batch}; "
          f"microseconds per event, lowest (all rounds)")
    for index, name in enumerate(("consumer CPU", "PostgreSQL CPU", "wall")):
        values = [round(f[index] / settled * 1e6, 1) for f in figures]
        print(f"{name:15} {min(values):6.1f}  {values}")


if __name__ == "__main__":
    main()
