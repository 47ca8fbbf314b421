"""Backpressure: refuse new events while the stream's backlog is over MAX_BACKLOG.

The backlog is what the group has not settled: entries pending on a consumer plus entries not
delivered yet. Reading it costs a round trip (XINFO GROUPS), so it is read at most every
`max_age_s` and, in between, grown by what this process appends; other ingest processes add
what they append within that window at most.

`Backlog` is the decision alone, with no I/O: the caller (`handlers.append`) asks whether the
value is `stale`, reads the stream when it is and hands the reading to `refreshed`, then asks
whether a request `admits` and reports what it `added`.
"""

from __future__ import annotations


class Backlog:
    def __init__(self, limit: int, max_age_s: float = 0.1) -> None:
        self.limit = limit  # 0: no limit
        self.max_age_s = max_age_s
        self.value = 0  # the last reading, plus what this process appended since
        self.read_at = float("-inf")  # when it was read (time.monotonic()); never yet

    def stale(self, now: float) -> bool:
        """Whether the backlog must be read again before deciding: never without a limit
        (nothing to decide), else when the last reading is older than `max_age_s`."""
        return bool(self.limit) and now - self.read_at > self.max_age_s

    def refreshed(self, value: int, now: float) -> None:
        """The backlog was read: `value` entries, at `now`."""
        self.value = value
        self.read_at = now

    def admits(self, count: int) -> bool:
        """Whether `count` more events fit under the limit (always, without a limit)."""
        return not self.limit or self.value + count <= self.limit

    def added(self, count: int) -> None:
        """This process appended `count` events since the last reading."""
        self.value += count
