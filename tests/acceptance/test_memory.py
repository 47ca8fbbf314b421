"""A consumer's peak memory under the largest events ingest accepts is bounded by BATCH_BYTES,
not by BATCH_SIZE times whatever the events weigh (issue 9: 500 entries of 5 MB made one read
of 2.5 GB).

Events of exactly MAX_EVENT_BYTES go through the real ingest while no consumer runs, so that the
consumers started then read full batches; they settle them all, the counts end exact, and each
consumer's peak resident memory (VmHWM) stays within

    baseline + 2.5 * read_count * MAX_EVENT_BYTES + 4 * STATEMENT_BYTES

where read_count * MAX_EVENT_BYTES <= BATCH_BYTES is the most a read brings, and `baseline` is
the VmHWM of a consumer started and reading from an empty stream. A consumer holds two copies
of what it read for the whole batch (the events as Redis sent them, kept for a dead letter, and
each payload re-serialized for the store), and a half more for what the allocator keeps; while
it settles a part of the batch (at most STATEMENT_BYTES of events, `dead_letters.py`), four
more of that part: the payloads as text, psycopg's binary array of them, its bytes, and libpq's
buffer.

BATCH_BYTES is set below BATCH_SIZE * MAX_EVENT_BYTES, so that the budget, not BATCH_SIZE,
decides how much a read brings. Measured on 2 cores: a read of 32 MiB, peak 62 -> 144 MiB.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from redis import Redis

from services.consumer.dead_letters import STATEMENT_BYTES
from services.stack.local import LocalStack
from tests.acceptance.helpers import local_stack, wait_for

MIB = 1024 * 1024
EVENTS = 3000
UNIQUE = 2700  # and 300 byte-for-byte re-sends
CONSUMERS = 2
# MAX_EVENT_BYTES: the default. Claims stay on (CLAIM_IDLE_MS 1 s): a claim reads the budget's
# count too, and a consumer handles one batch at a time, read or claimed.
SETTINGS = {"batch_size": 500, "batch_bytes": 32 * MIB}
FILLER = "".join(f"frame {n:05d} in a deep call stack; " for n in range(10_000))


def largest_event(number: int, size: int) -> bytes:
    """An event whose JSON is exactly `size` bytes. Its payload is plain ASCII, which Python
    holds at one byte a character: the most memory a consumer spends on an event of that size."""
    event: dict[str, Any] = {"topic": f"topic-{number % 3}", "event_id": f"big-{number}",
                             "timestamp": "2026-11-25T10:00:00Z", "source": "acceptance",
                             "payload": {"message": ""}}
    room = size - len(orjson.dumps(event))
    event["payload"]["message"] = (f"{number:08d} " + FILLER)[:room]
    raw = orjson.dumps(event)
    assert len(raw) == size
    return raw


def requests(size: int, per_request: int) -> Iterator[bytes]:
    """The bodies to send: UNIQUE events and EVENTS - UNIQUE copies of some, shuffled."""
    rng = random.Random(9)
    numbers = list(range(UNIQUE)) + [rng.randrange(UNIQUE) for _ in range(EVENTS - UNIQUE)]
    rng.shuffle(numbers)
    for start in range(0, EVENTS, per_request):
        chunk = numbers[start:start + per_request]
        yield b"[" + b",".join(largest_event(n, size) for n in chunk) + b"]"


def post(stack: LocalStack, body: bytes) -> int:
    with stack.request("/publish", body, timeout=60) as answer:
        accepted: int = orjson.loads(answer.read())["accepted"]
        return accepted


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, in bytes (VmHWM, reported in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_a_consumers_peak_memory_stays_within_its_batch_budget_under_the_largest_events(
        scratch: Path) -> None:
    with local_stack(scratch, SETTINGS, consumers=CONSUMERS) as stack, \
            Redis.from_url(stack.settings.redis_url) as redis:
        settings = stack.settings
        size, count = settings.max_event_bytes, settings.read_count
        assert count < settings.batch_size, "the budget must be what bounds a read"
        names = [f"consumer-{i + 1}" for i in range(CONSUMERS)]

        def registered() -> bool:
            if not redis.exists(settings.stream_key):
                return False
            seen = {c["name"].decode() for c in redis.xinfo_consumers(
                settings.stream_key, settings.consumer_group)}
            return {stack.consumer_names[name] for name in names} <= seen

        # The baseline: the consumers, started and reading from an empty stream. They are
        # stopped before any event comes, and started anew once all have come, so that every
        # read they make is a full one.
        wait_for(registered, "every consumer reading from the group", every_s=0.05)
        baseline = {name: peak_rss(stack.processes[name].pid) for name in names}
        for name in names:
            stack.processes[name].terminate()
            assert stack.processes[name].wait(timeout=30) == 0
        per_request = (settings.max_body_bytes - 2) // (size + 1)  # what one body can carry
        with ThreadPoolExecutor(max_workers=4) as pool:
            accepted = sum(pool.map(lambda body: post(stack, body),
                                    requests(size, per_request)))
        assert accepted == EVENTS
        for index in range(CONSUMERS):
            stack.start_consumer(index)
        stats = stack.wait_drained(timeout_s=120)
        peaks = {name: peak_rss(stack.processes[name].pid) for name in names}

    assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"],
            stats["dead_lettered"], stats["pending"]) == (EVENTS, UNIQUE, EVENTS - UNIQUE, 0, 0)
    full_reads = {name: sum(1 for entries in logged_batches(stack.data_dir, name)
                            if entries >= count) for name in names}
    allowance = int(2.5 * count * size) + 4 * STATEMENT_BYTES
    print(f"\nread_count {count} * MAX_EVENT_BYTES {size} = {count * size / MIB:.0f} MiB "
          f"(BATCH_BYTES {settings.batch_bytes / MIB:.0f} MiB), "
          f"allowance {allowance / MIB:.0f} MiB")
    for name in names:
        print(f"{name}: baseline {baseline[name] / MIB:.0f} MiB, peak {peaks[name] / MIB:.0f} MiB"
              f" (+{(peaks[name] - baseline[name]) / MIB:.0f}), full reads {full_reads[name]}")
    for name in names:
        assert full_reads[name] > 0, f"{name} never read a full batch: the bound was not tested"
        assert peaks[name] <= baseline[name] + allowance, (
            f"{name}: peak {peaks[name]} bytes, over {baseline[name]} + {allowance}")


def logged_batches(data_dir: Path, process: str) -> list[int]:
    """The size of every batch that consumer settled, from its log."""
    lines = (data_dir / "logs" / f"{process}.log").read_text().splitlines()
    records = [orjson.loads(line) for line in lines if line.startswith("{")]
    return [r["entries"] for r in records if r.get("action") == "batch_settled"]
