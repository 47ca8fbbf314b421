"""Recovery: taking over the entries a dead or stuck consumer left pending, and keeping hold of
the entries a live consumer is still settling.

An entry delivered to a consumer that died before XACK stays in the group's pending list. Once it
has been idle for CLAIM_IDLE_MS, any consumer may claim it (`Stream.claim_idle`) and settle it
again; the store makes that second settlement change nothing if the first one had committed.

A live consumer whose batch takes longer than CLAIM_IDLE_MS (a slow or locked store) keeps its
entries idle-free with a heartbeat (`kept`), so that nobody claims them from under it: a claim
would settle the batch twice and count deliveries that dead-letter an entry early.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from shared.entries import StreamId
from shared.exceptions import BrokerUnavailable, GroupMissing
from shared.metrics import REDELIVERIES
from shared.settings import Settings
from shared.store import Failure, Store
from shared.stream import CLAIM_START, Claimed, RawEntry, Stream

logger = logging.getLogger(__name__)


class Recovery:
    def __init__(self, stream: Stream, store: Store, consumer: str, settings: Settings) -> None:
        self.stream = stream
        self.store = store
        self.consumer = consumer
        self.min_idle_ms = settings.claim_idle_ms
        self.count = settings.read_count  # bounded in bytes too (BATCH_BYTES)
        # Scan the pending list a few times per idle period, so that an entry waits at most
        # about CLAIM_IDLE_MS * 1.5 before someone takes it over.
        self.interval_s = max(0.05, min(settings.claim_idle_ms / 2000, 10.0))
        self._cursor = CLAIM_START
        self._next_scan = 0.0
        # A page claimed whose deleted ids are not accounted for yet (the store failed): the
        # next call finishes it instead of claiming another, so that its entries, now held by
        # this consumer, are handed out at once (not claimed again later, one more delivery).
        self._unfinished: Claimed | None = None

    def due(self) -> bool:
        return time.monotonic() >= self._next_scan

    async def claim(self) -> list[RawEntry]:
        """Claim one page of idle entries, and dead-letter those that left the stream. A full
        pass over the pending list may take several calls; the next one is due at once until
        the pass ends, then after `interval_s`."""
        if self._unfinished is None:
            self._unfinished = await self.stream.claim_idle(
                self.consumer, min_idle_ms=self.min_idle_ms, start=self._cursor,
                count=self.count)
        claimed = self._unfinished
        if claimed.deleted:
            await self.account_vanished(claimed.deleted)
        self._unfinished = None
        self._cursor = claimed.next_start
        if self._cursor == CLAIM_START:
            self._next_scan = time.monotonic() + self.interval_s
        if claimed.entries:
            REDELIVERIES.labels(how="claimed").inc(len(claimed.entries))
            logger.info("claimed idle entries", extra={
                "action": "entries_claimed", "count": len(claimed.entries),
                "first": claimed.entries[0][0].decode()})
        return claimed.entries

    async def account_vanished(self, ids: list[bytes]) -> None:
        """Entries deleted from the stream while pending (by something other than logagg, which
        never trims a pending entry): no delivery will ever settle them. Unless they were
        settled already, they become dead letters, so that `received` still balances; only
        then are they acked. If either step fails they stay pending, and a later claim (by
        any consumer) reports them again; writing their letters twice counts them once."""
        vanished = [Failure(raw_id, StreamId.parse(raw_id), "deleted",
                            "the entry left the stream while pending") for raw_id in ids]
        new = await self.store.dead_letter(vanished)
        await self.stream.ack(ids)
        logger.warning("pending entries no longer in the stream", extra={
            "action": "entries_vanished", "count": len(ids), "dead_lettered": new})


@asynccontextmanager
async def kept(stream: Stream, consumer: str, ids: Sequence[bytes],
               claim_idle_ms: int) -> AsyncIterator[None]:
    """While the block runs, reset the idle time of the entries `ids` that `consumer` still
    holds every CLAIM_IDLE_MS / 3, so that recovery elsewhere does not claim them (a beat may
    be late or fail twice before one is due)."""
    ended = asyncio.Event()
    beat = asyncio.create_task(_beat(stream, consumer, ids, claim_idle_ms / 3000, ended))
    try:
        yield
    finally:
        # Ended by an event, not by cancelling: on Python 3.11 redis-py's commands (through
        # asyncio.wait_for) can swallow a cancellation, and the beat would run forever. A
        # refresh in flight finishes first: one Redis round trip.
        ended.set()
        await asyncio.wait([beat])
        beat.result()  # a beat ends with an exception only through a bug: let it show


async def _beat(stream: Stream, consumer: str, ids: Sequence[bytes], every_s: float,
                ended: asyncio.Event) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every_s):
                await ended.wait()
        if ended.is_set():
            return
        try:
            await stream.keep_owned(consumer, ids)
        except (BrokerUnavailable, GroupMissing) as error:
            # The batch goes on regardless; if Redis stays away, so does every other consumer's
            # claim. The next beat tries again.
            logger.warning("could not keep hold of the batch's entries: %s", error,
                           extra={"action": "keep_owned_failed"})
