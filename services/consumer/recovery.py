"""Recovery: taking over the entries a dead or stuck consumer left pending.

An entry delivered to a consumer that died before XACK stays in the group's pending list. Once it
has been idle for CLAIM_IDLE_MS, any consumer may claim it (XAUTOCLAIM) and settle it again; the
store makes that second settlement change nothing if the first one had committed.
"""

from __future__ import annotations

import logging
import time

from shared.entries import StreamId
from shared.metrics import REDELIVERIES
from shared.settings import Settings
from shared.store import Failure, Store
from shared.stream import RawEntry, Stream

logger = logging.getLogger(__name__)

START = b"0-0"


class Recovery:
    def __init__(self, stream: Stream, store: Store, consumer: str, settings: Settings) -> None:
        self.stream = stream
        self.store = store
        self.consumer = consumer
        self.min_idle_ms = settings.claim_idle_ms
        self.count = settings.batch_size
        # Scan the pending list a few times per idle period, so that an entry waits at most
        # about CLAIM_IDLE_MS * 1.5 before someone takes it over.
        self.interval_s = max(0.05, min(settings.claim_idle_ms / 2000, 10.0))
        self._cursor = START
        self._next_scan = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next_scan

    async def claim(self) -> list[RawEntry]:
        """Claim one page of idle entries. A full pass over the pending list may take several
        calls; the next one is due at once until the pass ends, then after `interval_s`."""
        claimed = await self.stream.claim_idle(
            self.consumer, min_idle_ms=self.min_idle_ms, start=self._cursor, count=self.count)
        self._cursor = claimed.next_start
        if self._cursor == START:
            self._next_scan = time.monotonic() + self.interval_s
        if claimed.deleted:
            await self.account_vanished(claimed.deleted)
        if claimed.entries:
            REDELIVERIES.labels(how="claimed").inc(len(claimed.entries))
            logger.info("claimed idle entries", extra={
                "action": "entries_claimed", "count": len(claimed.entries),
                "first": claimed.entries[0][0].decode()})
        return claimed.entries

    async def account_vanished(self, ids: list[bytes]) -> None:
        """Entries deleted from the stream while pending (by something other than logagg, which
        never trims a pending entry): XAUTOCLAIM has dropped them from the pending list, so no
        delivery will ever settle them. Unless they were settled already, they become dead
        letters, so that `received` still balances."""
        vanished = [Failure(raw_id, StreamId.parse(raw_id), "deleted",
                            "the entry left the stream while pending") for raw_id in ids]
        new = await self.store.dead_letter(vanished)
        logger.warning("pending entries no longer in the stream", extra={
            "action": "entries_vanished", "count": len(ids), "dead_lettered": new})
