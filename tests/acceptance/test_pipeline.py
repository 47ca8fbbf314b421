"""The real processes end to end: exact counts with duplicates, with a consumer killed by
SIGKILL mid-run, and across a restart of every process, Redis and PostgreSQL included."""

from __future__ import annotations

import random
import signal
from typing import Any

import orjson
from redis import Redis

from services.stack.local import LocalStack
from tests.acceptance.helpers import (
    logged_actions,
    publish,
    signal_while_holding,
    start_publish,
    wait_for_received,
)


def assert_exact(stats: dict[str, Any], *, received: int, unique: int) -> None:
    assert stats["pending"] == 0
    assert stats["alarms"] == []
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


def test_consumers_killed_with_sigkill_mid_run_still_end_exact(stack: LocalStack) -> None:
    """Three SIGKILLs, each at a moment the victim provably holds entries (it is frozen, its
    pending entries counted, and killed frozen): what it held is redelivered to the others,
    and the counts still end exact."""
    rng = random.Random()
    sender = start_publish(stack, "--events", "20000", "--duplicates", "0.3", "--rate", "4000")
    held: list[int] = []
    with Redis.from_url(stack.settings.redis_url) as redis:
        # Spread over the run: the k-th kill once a k/5 share of the events has come in. Each
        # consumer once, in a random order: one just restarted may take seconds to come back
        # on a busy machine, and would hold nothing before the 5-second publish ends.
        victims = rng.sample(["consumer-1", "consumer-2", "consumer-3"], 3)
        for kill, (share, victim) in enumerate(zip((0.2, 0.4, 0.6), victims, strict=True),
                                               start=1):
            wait_for_received(redis, stack, int(share * 20000), f"before kill {kill}")
            held.append(signal_while_holding(redis, stack, victim, signal.SIGKILL))
            stack.processes[victim].wait(timeout=30)
            stack.restart_exited()
    out, _ = sender.communicate(timeout=300)
    report = orjson.loads(out)
    assert len(held) == 3
    assert all(count > 0 for count in held), f"a victim held nothing when killed: {held}"
    assert report["events_accepted"] == 20000
    assert report["events_failed"] == 0
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
