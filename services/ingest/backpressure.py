"""Backpressure: refuse new events while the stream's backlog is over MAX_BACKLOG entries or
its memory over MAX_BACKLOG_BYTES.

The backlog is what the group has not settled: entries pending on a consumer plus entries not
delivered yet. Its bytes are the memory Redis uses for the stream's key (MEMORY USAGE with its
default sampling: the size of a few of the stream's nodes, extrapolated, so a read costs the
same however long the stream): the backlog's entries, the group's pending list, and settled
entries until housekeeping trims them (every 5 s). Reading either costs a round trip, so each
is read at most every `max_age_s` and, in between, grown by what this process appends (its
events' bytes, a floor of what Redis keeps for them); other ingest processes add what they
append within that window at most.

`Backlog` is the decision alone, with no I/O: the caller (`handlers.append`) asks whether the
values are `stale`, reads the stream when they are and hands the reading to `refreshed`, then
asks whether a request `admits` and reports what it `added`.
"""

from __future__ import annotations


class Backlog:
    def __init__(self, limit: int, max_age_s: float = 0.1, bytes_limit: int = 0) -> None:
        self.limit = limit  # entries; 0: no limit
        self.bytes_limit = bytes_limit  # bytes of the stream's memory; 0: no limit
        self.max_age_s = max_age_s
        self.value = 0  # entries: the last reading, plus what this process appended since
        self.bytes = 0  # bytes: the same
        self.read_at = float("-inf")  # when it was read (time.monotonic()); never yet

    def stale(self, now: float) -> bool:
        """Whether the backlog must be read again before deciding: never without a limit
        (nothing to decide), else when the last reading is older than `max_age_s`."""
        return bool(self.limit or self.bytes_limit) and now - self.read_at > self.max_age_s

    def refreshed(self, value: int, now: float, size: int = 0) -> None:
        """The backlog was read: `value` entries and `size` bytes, at `now`."""
        self.value = value
        self.bytes = size
        self.read_at = now

    def admits(self, count: int, size: int = 0) -> bool:
        """Whether `count` more events of `size` bytes in all fit under both limits (always,
        without limits)."""
        return ((not self.limit or self.value + count <= self.limit)
                and (not self.bytes_limit or self.bytes + size <= self.bytes_limit))

    def over_bytes(self, size: int) -> bool:
        """Whether it is the bytes limit that `size` more bytes would pass."""
        return bool(self.bytes_limit) and self.bytes + size > self.bytes_limit

    def added(self, count: int, size: int = 0) -> None:
        """This process appended `count` events of `size` bytes since the last reading."""
        self.value += count
        self.bytes += size
