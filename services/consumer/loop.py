"""The consumer's loop: read a batch, settle it in one transaction, then ack it.

Acking only after COMMIT is what makes delivery at-least-once; the store's redelivery check is
what makes a second delivery harmless. A batch whose transaction failed is not acked: a
transient failure (PostgreSQL down, a deadlock) is retried here until it succeeds or the process
is asked to stop; anything else stays pending for recovery to take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg
import psycopg_pool
from redis.exceptions import RedisError

from services.consumer.recovery import Recovery
from shared.constants import EVENT_FIELD
from shared.events import Entry
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, EVENTS_PROCESSED
from shared.settings import Settings
from shared.store import Settled, Store
from shared.stream import RawEntry, Stream

logger = logging.getLogger(__name__)

# Failures worth retrying the same batch for: the server went away, or lost a lock race.
TRANSIENT = (psycopg.OperationalError, psycopg.errors.DeadlockDetected,
             psycopg.errors.SerializationFailure, psycopg_pool.PoolTimeout)
READ_BLOCK_MS = 1000  # how long a read may block: also the longest wait for a stop request
MAX_BACKOFF_S = 5.0

T = TypeVar("T")


class Stopped(Exception):
    """A stop was requested while waiting for the broker to come back."""


@dataclass
class Totals:
    """What this process did, for the summary line it logs on shutdown."""

    batches: int = 0
    unique: int = 0
    duplicate: int = 0
    redelivered: int = 0
    claimed: int = 0
    failed_batches: int = 0
    started: float = field(default_factory=time.monotonic)


class Consumer:
    def __init__(self, settings: Settings, stream: Stream, store: Store) -> None:
        self.settings = settings
        self.name = settings.consumer_name
        self.stream = stream
        self.store = store
        self.recovery = Recovery(stream, self.name, settings)
        self.totals = Totals()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is settled and acked before returning."""
        try:
            await self._until_done(self.stream.ensure_group, stop)
            await self.resume_own(stop)
            while not stop.is_set():
                await self.step(stop)
        except Stopped:
            pass

    async def resume_own(self, stop: asyncio.Event) -> None:
        """Settle first what this consumer name held when it last stopped (a restart under a
        stable CONSUMER_NAME), without waiting CLAIM_IDLE_MS for recovery to notice it."""
        after = b"0"
        while not stop.is_set():
            own = await self._until_done(functools.partial(
                self.stream.read_own_pending, self.name, self.settings.batch_size, after), stop)
            if not own:
                return
            await self.handle(own, stop)
            after = own[-1][0]

    async def step(self, stop: asyncio.Event) -> None:
        """One turn of the loop: take over idle entries when due, else read new ones."""
        try:
            if self.recovery.due():
                claimed = await self.recovery.claim()
                if claimed:
                    self.totals.claimed += len(claimed)
                    await self.handle(claimed, stop)
                    return
            batch = await self.stream.read_new(self.name, self.settings.batch_size, READ_BLOCK_MS)
        except RedisError as error:
            await self._pause("broker", error, stop)
            return
        if batch:
            await self.handle(batch, stop)

    async def handle(self, raw: Sequence[RawEntry], stop: asyncio.Event) -> None:
        """Settle a batch and ack it; leave it pending if it cannot be settled."""
        started = time.perf_counter()
        entries = decode(raw)
        settled = await self._settle(entries, stop)
        if settled is None:
            self.totals.failed_batches += 1
            return
        # Committed: from here on a lost ack costs only a harmless redelivery.
        await self._until_done(lambda: self.stream.ack([e.raw_id for e in entries]), stop)
        self._account(len(entries), settled, time.perf_counter() - started)

    async def _settle(self, entries: list[Entry], stop: asyncio.Event) -> Settled | None:
        attempt = 0
        while True:
            try:
                return await self.store.settle(entries)
            except TRANSIENT as error:
                if stop.is_set():
                    # Not committed, not acked: the entries stay pending for another consumer.
                    return None
                attempt += 1
                await self._pause("store", error, stop, attempt)
            except psycopg.Error:
                logger.exception("batch failed; left pending for recovery",
                                 extra={"action": "batch_failed", "entries": len(entries)})
                return None

    def _account(self, size: int, settled: Settled, seconds: float) -> None:
        unique, duplicate = settled.unique_total, settled.duplicate_total
        redelivered = size - unique - duplicate
        self.totals.batches += 1
        self.totals.unique += unique
        self.totals.duplicate += duplicate
        self.totals.redelivered += redelivered
        EVENTS_PROCESSED.labels(result="unique").inc(unique)
        EVENTS_PROCESSED.labels(result="duplicate").inc(duplicate)
        EVENTS_PROCESSED.labels(result="redelivered").inc(redelivered)
        BATCH_SIZE.observe(size)
        BATCH_SECONDS.observe(seconds)
        logger.info("batch settled", extra={
            "action": "batch_settled", "entries": size, "unique": unique,
            "duplicate": duplicate, "redelivered": redelivered, "ms": round(seconds * 1000, 1)})

    async def _until_done(self, call: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
        """Retry a broker call through outages, backing off, until it succeeds or stop is set."""
        attempt = 0
        while True:
            try:
                return await call()
            except RedisError as error:
                if stop.is_set():
                    raise Stopped() from error
                attempt += 1
                await self._pause("broker", error, stop, attempt)

    async def _pause(self, what: str, error: BaseException, stop: asyncio.Event,
                     attempt: int = 1) -> None:
        delay = min(MAX_BACKOFF_S, 0.1 * 2 ** (attempt - 1))
        logger.warning("%s unavailable, retrying in %.1fs: %s", what, delay, error,
                       extra={"action": f"{what}_unavailable", "attempt": attempt})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)

    def summary(self) -> dict[str, object]:
        t = self.totals
        return {"action": "consumer_summary", "consumer": self.name, "batches": t.batches,
                "unique": t.unique, "duplicate": t.duplicate, "redelivered": t.redelivered,
                "claimed": t.claimed, "failed_batches": t.failed_batches,
                "seconds": round(time.monotonic() - t.started, 1)}


def decode(raw: Sequence[RawEntry]) -> list[Entry]:
    """The entries that carry an event. One that does not (written by something other than
    ingest) is logged and left pending rather than taking its batch down."""
    entries = []
    for raw_id, fields in raw:
        try:
            entries.append(Entry.decode(raw_id, fields[EVENT_FIELD]))
        except (KeyError, ValueError, TypeError):
            logger.error("undecodable stream entry left pending",
                         extra={"action": "entry_undecodable", "id": raw_id.decode()})
    return entries
