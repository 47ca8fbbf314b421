"""Backpressure: refuse new events while the stream's backlog is over MAX_BACKLOG.

The backlog is what the group has not settled: entries pending on a consumer plus entries not
delivered yet. Reading it costs a round trip (XINFO GROUPS), so it is read at most every
`max_age_s` and, in between, grown by what this process appends; other ingest processes add
what they append within that window at most.
"""

from __future__ import annotations

import time

from shared.stream import Stream


class Backlog:
    def __init__(self, stream: Stream, limit: int, max_age_s: float = 0.1) -> None:
        self.stream = stream
        self.limit = limit
        self.max_age_s = max_age_s
        self._value = 0
        self._read_at = float("-inf")

    async def admits(self, count: int) -> bool:
        """Whether `count` more events fit under the limit (always, without a limit)."""
        if not self.limit:
            return True
        if time.monotonic() - self._read_at > self.max_age_s:
            self._value = await self.stream.pending()
            self._read_at = time.monotonic()
        return self._value + count <= self.limit

    def added(self, count: int) -> None:
        self._value += count
