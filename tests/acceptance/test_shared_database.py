"""Two deployments, one database (SPEC §4: positions belong to their stream).

Two stacks with different STREAM_KEY on one Redis and one PostgreSQL database, both sent the
same events at once: each ends with its own exact counts, as if it were alone. Before positions
were scoped to their stream, the second stack's events were acked and counted nowhere (its
positions were below the floor the first one had raised, and its keys were the first one's).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from services.stack.local import LocalStack
from services.stack.servers import free_port
from tests.acceptance.helpers import publisher_env, start_publish

EVENTS = 4000
UNIQUE = 2800


def second_deployment(first: LocalStack, folder: Path) -> LocalStack:
    """Ingest and two consumers of another stream, on the first stack's servers."""
    folder.mkdir(parents=True)
    second = LocalStack(first.settings, folder, redis_port=0, postgres_port=0, consumers=2)
    second.settings = replace(first.settings, stream_key="events-of-team-b",
                              ingest_port=free_port())
    second.start_ingest(0)
    for index in range(second.consumer_count):
        second.start_consumer(index)
    second.wait_ready()
    return second


def published(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode(errors="replace")
    report: dict[str, Any] = orjson.loads(out)
    return report


def test_two_stacks_with_different_stream_keys_on_one_database_each_end_exact(
        stack: LocalStack, tmp_path: Path) -> None:
    second = second_deployment(stack, tmp_path / "second")
    try:
        # The same keys, at the same time, into both: each deployment dedups on its own.
        args = ("--events", str(EVENTS), "--duplicates", "0.3", "--seed", "5")
        senders = [start_publish(stack, *args),
                   subprocess.Popen([sys.executable, "-m", "services.cli", "publish", "--url",
                                     second.base_url, "--json", *args],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=publisher_env(second))]
        for sender in senders:
            assert published(sender)["events_accepted"] == EVENTS
        for deployment in (stack, second):
            stats = deployment.wait_drained(timeout_s=120)
            assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"],
                    stats["dead_lettered"], stats["alarms"]) == (
                EVENTS, UNIQUE, EVENTS - UNIQUE, 0, []), deployment.settings.stream_key
    finally:
        second.stop_processes()
