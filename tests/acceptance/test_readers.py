"""Readers during a run with consumers killed mid-batch (SPEC §3): `/stats` is one consistent
snapshot (it never says nothing is pending while its counts do not balance), and a reader
tailing `GET /events` with cursors sees every stored event exactly once.

Before: 3 of 12,883 `/stats` reads showed pending 0 with received != settled; and a cursor handed
out past entries still in flight skipped them for good once they committed (the k6 tail).
"""

from __future__ import annotations

import signal
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson
from redis import Redis

from services.stack.local import LocalStack
from tests.acceptance.helpers import signal_while_holding, start_publish, wait_for_received

EVENTS = 12_000
PAGE = 100


def get(stack: LocalStack, path: str) -> dict[str, Any] | None:
    """The answer's body, or None for a 503 (a reader retries, as any client would)."""
    try:
        with stack.request(path) as answer:
            body: dict[str, Any] = orjson.loads(answer.read())
            return body
    except urllib.error.HTTPError as error:
        if error.code == 503:
            return None
        raise


class StatsPoller(threading.Thread):
    def __init__(self, stack: LocalStack, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.stack, self.stop = stack, stop
        self.reads = 0
        self.broken: list[dict[str, Any]] = []  # pending 0 and no balance

    def run(self) -> None:
        while not self.stop.is_set():
            stats = get(self.stack, "/stats")
            if stats is None:
                continue
            self.reads += 1
            settled = (stats["unique_processed"] + stats["duplicate_dropped"]
                       + stats["dead_lettered"])
            if stats["pending"] == 0 and stats["received"] != settled:
                self.broken.append(stats)


class Tailer(threading.Thread):
    """Reads pages with cursors as a tailing client does: a full page hands out the next cursor
    and is taken; a short one is the end for now, read again from the same cursor later."""

    def __init__(self, stack: LocalStack, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.stack, self.stop = stack, stop
        self.cursor: str | None = None
        self.seen: list[tuple[str, str]] = []

    def step(self) -> dict[str, Any] | None:
        query = {"limit": str(PAGE), **({"after": self.cursor} if self.cursor else {})}
        page = get(self.stack, "/events?" + urllib.parse.urlencode(query))
        if page is not None and page["next"] is not None:
            self.seen += [(e["topic"], e["event_id"]) for e in page["events"]]
            self.cursor = page["next"]
        return page

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()

    def finish(self) -> None:
        """Once everything is settled: the full pages left, then the last, short one."""
        while True:
            page = self.step()
            assert page is not None
            if page["next"] is None:
                self.seen += [(e["topic"], e["event_id"]) for e in page["events"]]
                return


def test_stats_stays_consistent_and_a_tailing_reader_misses_nothing_while_consumers_die(
        stack: LocalStack) -> None:
    stop = threading.Event()
    poller, tailer = StatsPoller(stack, stop), Tailer(stack, stop)
    poller.start()
    tailer.start()
    sender = start_publish(stack, "--events", str(EVENTS), "--duplicates", "0.3",
                           "--rate", "3000", "--seed", "21")
    try:
        with Redis.from_url(stack.settings.redis_url) as redis:
            for kill, share in enumerate((0.3, 0.6), start=1):
                wait_for_received(redis, stack, int(share * EVENTS), f"before kill {kill}")
                victim = f"consumer-{kill}"
                signal_while_holding(redis, stack, victim, signal.SIGKILL)
                stack.processes[victim].wait(timeout=30)
                stack.restart_exited()
        out, _ = sender.communicate(timeout=300)
        assert orjson.loads(out)["events_accepted"] == EVENTS
        stats = stack.wait_drained(timeout_s=120)
    finally:
        stop.set()
        poller.join(timeout=30)
        tailer.join(timeout=30)
    tailer.finish()

    assert poller.reads > 100, "the poller read /stats throughout the run"
    assert poller.broken == []
    assert stats["unique_processed"] == int(EVENTS * 0.7)
    assert len(tailer.seen) == len(set(tailer.seen)), "an event seen twice"
    assert len(tailer.seen) == stats["unique_processed"], "an event skipped"
