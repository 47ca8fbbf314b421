"""Retention and the dedup window with real processes and short settings: a topic's events go
with their partitions, counters stay, and events sent again once the window has passed are
stored again and counted as unique, with every count exact across both boundaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import psycopg

from shared.retention import DAY_MS
from tests.acceptance.helpers import local_stack, publish, wait_for

SHORT_MS = 6_000  # the topic `short` keeps its events 6 s
WINDOW_MS = 4_000  # keys are remembered 4 s (a generation a second)


def _one(url: str, query: str, *args: Any) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, list(args)).fetchone()
        assert row is not None
        return row[0]


def _listed(stack: Any, topic: str) -> list[dict[str, Any]]:
    with stack.request(f"/events?topic={topic}&limit=1000") as answer:
        events: list[dict[str, Any]] = orjson.loads(answer.read())["events"]
        return events


def test_a_topic_s_events_go_after_its_retention_and_keys_after_the_window(
        scratch: Path) -> None:
    settings = {"retention_topic_days": orjson.dumps({"short": SHORT_MS / DAY_MS}).decode(),
                "partition_seconds": 1, "dedup_window_days": WINDOW_MS / DAY_MS}
    with local_stack(scratch, settings) as stack:
        url = stack.settings.database_url
        args = ("--events", "2000", "--duplicates", "0.3", "--topics", "short,long",
                "--seed", "5")
        first = publish(stack, *args)
        unique = first["unique_keys"]
        stats = stack.wait_drained(timeout_s=120)
        assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"]) == (
            2000, unique, 2000 - unique)
        short = stats["topics"]["short"]["unique_processed"]
        assert 0 < short < unique
        assert len(_listed(stack, "short")) == short

        # Retention: the short topic's events go, a partition at a time; counters stay.
        wait_for(lambda: _one(url, "SELECT count(*) FROM events WHERE topic = 'short'") == 0,
                 "the short topic's events removed", timeout_s=60)
        assert _listed(stack, "short") == []
        assert len(_listed(stack, "long")) == unique - short
        assert stack.wait_drained(timeout_s=10)["unique_processed"] == unique
        assert _one(url, "SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables "
                         "WHERE relname LIKE 'events%%' OR relname LIKE 'dedup_keys%%'") == 0

        # The window: once every key of the first run is forgotten, the same events sent
        # again are stored again, as unique; their copies among themselves are duplicates.
        last = _one(url, "SELECT max(stream_ms) FROM events")
        wait_for(lambda: _one(url, "SELECT forgotten_ms FROM streams") > last,
                 "the first run's keys forgotten", timeout_s=60)
        publish(stack, *args)
        stats = stack.wait_drained(timeout_s=120)
        assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"],
                stats["dead_lettered"], stats["alarms"]) == (
            4000, 2 * unique, 2 * (2000 - unique), 0, [])
