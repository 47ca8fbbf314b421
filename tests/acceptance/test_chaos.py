"""Chaos: while 40,000 events (30% duplicates) are published, consumers are killed with
SIGKILL every ~2 s and restarted, PostgreSQL is killed once, and Redis (append-only file,
fsync always) is killed once. At the end the counts are exact, nothing is dead-lettered and
nothing is pending."""

from __future__ import annotations

import random
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from services.stack.local import LocalStack
from tests.acceptance.conftest import local_stack, start_publish

EVENTS = 40_000
UNIQUE = 28_000


@pytest.fixture
def durable_stack(scratch: Path) -> Iterator[LocalStack]:
    with local_stack(scratch, redis_fsync="always") as running:
        yield running


def readyz(stack: LocalStack) -> int:
    try:
        with urllib.request.urlopen(f"{stack.base_url}/readyz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


class Chaos:
    """The disruptions, in a random order at random moments, each logged for the report."""

    def __init__(self, stack: LocalStack, rng: random.Random) -> None:
        self.stack = stack
        self.rng = rng
        self.log: list[str] = []
        self.readyz_during_outage: list[int] = []

    def kill_a_consumer(self) -> None:
        victim = f"consumer-{self.rng.randint(1, 3)}"
        process = self.stack.processes[victim]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.stack.restart_exited()
        self.log.append(f"SIGKILL {victim}")

    def kill_postgres(self) -> None:
        self.stack.postgres.kill()
        self.readyz_during_outage.append(readyz(self.stack))
        time.sleep(1.0)  # an outage of a second: the length of the disruption, not a wait
        self.stack.postgres.start()
        self.wait_ready_again()
        self.log.append("SIGKILL postgres, restarted after 1 s")

    def kill_redis(self) -> None:
        self.stack.redis.kill()
        self.readyz_during_outage.append(readyz(self.stack))
        time.sleep(1.0)
        self.stack.redis.start()
        self.wait_ready_again()
        self.log.append("SIGKILL redis, restarted after 1 s")

    def wait_ready_again(self) -> None:
        """/readyz turns back to 200 once the server is back."""
        deadline = time.monotonic() + 30
        while readyz(self.stack) != 200:
            assert time.monotonic() < deadline, "/readyz did not recover"
            time.sleep(0.05)

    def run_while(self, sender: subprocess.Popen[bytes]) -> None:
        servers = [self.kill_postgres, self.kill_redis]
        self.rng.shuffle(servers)
        turn = 0
        while sender.poll() is None:
            time.sleep(self.rng.uniform(1.5, 2.5))  # "every ~2 s": a rhythm, not a wait
            if sender.poll() is not None:
                break
            if turn in (1, 3) and servers:
                servers.pop()()
            else:
                self.kill_a_consumer()
            turn += 1
        assert not servers, f"the publish ended before every server was killed: {self.log}"


def test_counts_are_exact_after_consumers_postgresql_and_redis_are_killed_under_load(
        durable_stack: LocalStack) -> None:
    stack = durable_stack
    sender = start_publish(stack, "--events", str(EVENTS), "--duplicates", "0.3",
                           "--rate", "2000", "--max-retries", "30", "--seed", "2026")
    chaos = Chaos(stack, random.Random())
    try:
        chaos.run_while(sender)
    finally:
        out, err = sender.communicate(timeout=300)
    report: dict[str, Any] = orjson.loads(out)
    assert report["events_accepted"] == EVENTS, err.decode()[-2000:]
    assert report["unique_keys"] == UNIQUE
    assert report["retries"] > 0, "the outages were not seen by the publisher"
    assert 503 in chaos.readyz_during_outage

    stats = stack.wait_drained(timeout_s=180)
    # A 202 lost with its connection is retried and appended again: received can exceed the
    # events sent, and the extra copies are duplicates. Nothing else may differ.
    assert stats["pending"] == 0
    assert stats["dead_lettered"] == 0
    assert stats["unique_processed"] == UNIQUE
    assert stats["received"] >= EVENTS
    assert stats["duplicate_dropped"] == stats["received"] - UNIQUE
    with psycopg.connect(stack.settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (UNIQUE,)
    print(f"chaos: {chaos.log}; publisher retries {report['retries']}; stats {stats}")
