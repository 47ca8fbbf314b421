"""Graceful shutdown: SIGTERM or SIGINT lets every process finish what it holds, exit 0, and
lose nothing; the publisher's retries carry the rest over to the restarted process."""

from __future__ import annotations

import signal
import time
from typing import Any

import orjson
import pytest
from redis import Redis

from services.stack.local import LocalStack
from tests.acceptance.conftest import held_by, logged_actions, start_publish


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ingest_stopped_under_load_exits_0_and_loses_no_event(
        stack: LocalStack, signum: int) -> None:
    sender = start_publish(stack, "--events", "10000", "--duplicates", "0.3", "--rate", "4000",
                           "--seed", "5", "--max-retries", "30")
    time.sleep(1.0)  # let requests flow: the moment of the stop, not a wait for a condition
    ingest = stack.processes["ingest"]
    ingest.send_signal(signum)
    assert ingest.wait(timeout=30) == 0
    assert logged_actions(stack, "ingest")[-1] == "ingest_stop"
    stack.restart_exited()
    out, _ = sender.communicate(timeout=120)
    report: dict[str, Any] = orjson.loads(out)
    assert report["events_accepted"] == 10_000
    stats = stack.wait_drained(timeout_s=120)
    assert stats["unique_processed"] == 7_000
    assert stats["received"] == stats["unique_processed"] + stats["duplicate_dropped"]
    assert stats["dead_lettered"] == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_consumers_stopped_under_load_exit_0_holding_nothing(
        stack: LocalStack, signum: int) -> None:
    sender = start_publish(stack, "--events", "10000", "--duplicates", "0.3", "--rate", "4000")
    time.sleep(1.0)
    with Redis.from_url(stack.settings.redis_url) as redis:
        for index in range(3):
            name = f"consumer-{index + 1}"
            process = stack.processes[name]
            process.send_signal(signum)
            assert process.wait(timeout=30) == 0
            assert held_by(redis, stack, name) == 0, "it finished and acked its batch"
    stack.restart_exited()
    sender.communicate(timeout=120)
    stats = stack.wait_drained(timeout_s=120)
    assert stats["received"] == stats["unique_processed"] + stats["duplicate_dropped"]
    assert stats["unique_processed"] == 7_000
