"""The real processes end to end: exact counts with duplicates, with a consumer killed by
SIGKILL mid-run, and across a restart of every process, Redis and PostgreSQL included."""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import orjson
from redis import Redis

from services.stack.local import LocalStack
from tests.acceptance.conftest import held_by, logged_actions, publish, start_publish


def assert_exact(stats: dict[str, Any], *, received: int, unique: int) -> None:
    assert stats["pending"] == 0
    assert stats["dead_lettered"] == 0
    assert stats["received"] == received
    assert stats["unique_processed"] == unique
    assert stats["duplicate_dropped"] == received - unique
    assert sum(t["unique_processed"] + t["duplicate_dropped"]
               for t in stats["topics"].values()) == received


def test_twenty_thousand_events_with_thirty_percent_duplicates_end_with_exact_counts(
        stack: LocalStack) -> None:
    report = publish(stack, "--events", "20000", "--duplicates", "0.3",
                     "--batch", "100", "--concurrency", "8")
    assert report["events_accepted"] == 20000
    assert report["unique_keys"] == 14000
    stats = stack.wait_drained(timeout_s=120)
    assert_exact(stats, received=20000, unique=14000)


def kill_holding_entries(redis: Redis, stack: LocalStack, victim: str) -> int:
    """SIGKILL the consumer as soon as it holds entries (within 2 s); return how many it held."""
    deadline = time.monotonic() + 2
    while held_by(redis, stack, victim) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    stack.processes[victim].send_signal(signal.SIGKILL)
    stack.processes[victim].wait()
    return held_by(redis, stack, victim)


def test_consumers_killed_with_sigkill_mid_run_still_end_exact(stack: LocalStack) -> None:
    rng = random.Random()
    sender = start_publish(stack, "--events", "20000", "--duplicates", "0.3", "--rate", "5000")
    held = []
    with Redis.from_url(stack.settings.redis_url) as redis:
        while sender.poll() is None and len(held) < 3:
            time.sleep(rng.uniform(0.3, 0.8))  # a random moment, not a synchronisation
            victim = f"consumer-{rng.randint(1, 3)}"
            held.append(kill_holding_entries(redis, stack, victim))
            stack.restart_exited()
    out, _ = sender.communicate(timeout=300)
    report = orjson.loads(out)
    assert len(held) >= 2, "the run was too short to kill consumers in its middle"
    assert sum(held) > 0, "no consumer died holding entries: nothing was redelivered"
    assert report["events_accepted"] == 20000
    stats = stack.wait_drained(timeout_s=120)
    assert_exact(stats, received=20000, unique=14000)


def test_every_count_survives_a_restart_of_every_process_and_old_events_are_duplicates(
        stack: LocalStack) -> None:
    publish(stack, "--events", "5000", "--duplicates", "0.3", "--seed", "11")
    before = stack.wait_drained(timeout_s=120)
    assert_exact(before, received=5000, unique=3500)

    stack.stop()
    stack.start()
    after = stack.stats()
    assert {k: v for k, v in after.items() if k != "uptime_seconds"} == \
        {k: v for k, v in before.items() if k != "uptime_seconds"}

    report = publish(stack, "--events", "5000", "--duplicates", "0.3", "--seed", "11")
    assert report["events_accepted"] == 5000
    again = stack.wait_drained(timeout_s=120)
    assert_exact(again, received=10000, unique=3500)


def test_a_consumer_stops_on_sigterm_with_exit_code_0_and_a_summary(stack: LocalStack) -> None:
    publish(stack, "--events", "2000", "--duplicates", "0.3")
    stack.wait_drained(timeout_s=120)
    process = stack.processes["consumer-1"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert logged_actions(stack, "consumer-1")[-1] == "consumer_summary"
