"""The consumer's loop: read a batch, settle it in one transaction, then ack it.

Acking only after COMMIT is what makes delivery at-least-once; the store's redelivery check is
what makes a second delivery harmless. A batch whose transaction failed is not acked: every call
runs under the retry policy (`retry.py`: outages, conflicts, a lost group) until it succeeds or
the process is asked to stop; an entry that fails alone is isolated and, in the end,
dead-lettered (`dead_letters.py`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from services.consumer import dead_letters, invariants
from services.consumer.housekeeping import Housekeeping
from services.consumer.recovery import Recovery, kept
from services.consumer.retry import Stopped, until_done
from shared.entries import Entry, Unreadable
from shared.metrics import BATCH_ENTRIES, BATCH_SECONDS, EVENTS_PROCESSED, REDELIVERIES
from shared.settings import Settings
from shared.store import Failure, Settled, Store
from shared.stream import RawEntry, Stream

logger = logging.getLogger(__name__)

READ_BLOCK_MS = 1000  # how long a read may block: also the longest wait for a stop request

T = TypeVar("T")


@dataclass
class Totals:
    """What this process did, for the summary line it logs on shutdown."""

    batches: int = 0
    unique: int = 0
    duplicate: int = 0
    redelivered: int = 0
    claimed: int = 0
    dead_lettered: int = 0
    left_pending: int = 0
    started: float = field(default_factory=time.monotonic)


class Consumer:
    def __init__(self, settings: Settings, stream: Stream, store: Store) -> None:
        self.settings = settings
        self.name = settings.consumer_name
        self.stream = stream
        self.store = store
        self.recovery = Recovery(stream, store, self.name, settings)
        self.housekeeping = Housekeeping(stream, store, settings)
        self.totals = Totals()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is settled and acked before returning."""
        try:
            await self._until_done(self.recreate_group, stop)
            await self._until_done(self.housekeeping.make_partitions, stop)
            await self._until_done(lambda: invariants.check_broker_history(
                self.stream, self.store), stop)
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
                self.stream.read_own_unacked, self.name, self.settings.read_count, after), stop)
            if not own:
                return
            REDELIVERIES.labels(how="resumed").inc(len(own))
            await self.handle(own, stop)
            after = own[-1][0]

    async def step(self, stop: asyncio.Event) -> None:
        """One turn of the loop: upkeep and takeover of idle entries when due, else read."""
        if self.housekeeping.due():
            await self._until_done(self.housekeeping.run, stop)
        if self.recovery.due():
            claimed = await self._until_done(self.recovery.claim, stop)
            if claimed:
                self.totals.claimed += len(claimed)
                await self.handle(claimed, stop)
                return
        read_at = time.monotonic()
        batch = await self._until_done(functools.partial(
            self.stream.read_new, self.name, self.settings.read_count, READ_BLOCK_MS), stop)
        if batch:
            await self.handle(batch, stop, read_at=read_at)

    async def recreate_group(self) -> None:
        await invariants.ensure_group(self.stream, self.store)

    async def handle(self, raw: Sequence[RawEntry], stop: asyncio.Event,
                     read_at: float | None = None) -> None:
        """Settle a batch and ack what was settled or given up on; leave the rest pending.
        `read_at`: for a batch never delivered before (XREADGROUP >), when its read began.

        Meanwhile the batch's entries are kept from going idle, however long the settling
        takes: otherwise another consumer would claim them and settle them a second time."""
        async with kept(self.stream, self.name, [raw_id for raw_id, _ in raw],
                        self.settings.claim_idle_ms):
            await self._handle(raw, stop, read_at)

    async def _handle(self, raw: Sequence[RawEntry], stop: asyncio.Event,
                      read_at: float | None) -> None:
        started = time.perf_counter()
        entries, unreadable = decode(raw)
        # If a stop comes while PostgreSQL is away, nothing was committed or acked: the entries
        # stay pending for another consumer.
        outcome = await self._until_done(
            lambda: dead_letters.settle_isolating(self.store, entries), stop)
        # Below the floor is a sign only while nobody else could have claimed the batch and
        # settled it (a consumer held up longer than CLAIM_IDLE_MS, by an outage or a freeze,
        # finds its batch settled by others and below the floor, as it should).
        if read_at is not None and (
                time.monotonic() - read_at) * 1000 < self.settings.claim_idle_ms:
            await self._until_done(lambda: invariants.check_first_deliveries(
                self.store, self.stream, outcome.settled_entries, outcome.settled.floor), stop)
        await self._until_done(lambda: invariants.check_settled(self.store, outcome.settled),
                               stop)
        failures = [*outcome.failures, *(Failure.of_unreadable(u) for u in unreadable)]
        given_up = await self._until_done(
            lambda: dead_letters.give_up_exhausted(self.stream, self.store, self.name,
                                             self.settings.max_deliveries, failures), stop)
        # Committed: from here on a lost ack costs only a harmless redelivery.
        done = [e.raw_id for e in outcome.settled_entries] + given_up.ids
        await self._until_done(lambda: self.stream.ack(done), stop)
        if logger.isEnabledFor(logging.DEBUG):
            trace(outcome.settled_entries, outcome.settled)
        self._account(len(raw), outcome.settled, given_up, len(failures),
                      time.perf_counter() - started)

    def _account(self, size: int, settled: Settled, given_up: dead_letters.GivenUp, failed: int,
                 seconds: float) -> None:
        unique, duplicate = settled.unique_total, settled.duplicate_total
        redelivered = size - failed - unique - duplicate
        t = self.totals
        t.batches += 1
        t.unique += unique
        t.duplicate += duplicate
        t.redelivered += redelivered
        t.dead_lettered += given_up.new
        t.left_pending += failed - len(given_up.ids)
        for result, count in (("unique", unique), ("duplicate", duplicate),
                              ("redelivered", redelivered), ("dead_lettered", given_up.new)):
            EVENTS_PROCESSED.labels(result=result).inc(count)
        BATCH_ENTRIES.observe(size)
        BATCH_SECONDS.observe(seconds)
        logger.info("batch settled", extra={
            "action": "batch_settled", "entries": size, "unique": unique,
            "duplicate": duplicate, "redelivered": redelivered, "failed": failed,
            "dead_lettered": given_up.new, "ms": round(seconds * 1000, 1)})

    async def _until_done(self, call: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
        return await until_done(call, recreate_group=self.recreate_group, stop=stop)

    def summary(self) -> dict[str, object]:
        t = self.totals
        return {"action": "consumer_summary", "consumer": self.name, "batches": t.batches,
                "unique": t.unique, "duplicate": t.duplicate, "redelivered": t.redelivered,
                "claimed": t.claimed, "dead_lettered": t.dead_lettered,
                "left_pending": t.left_pending,
                "seconds": round(time.monotonic() - t.started, 1)}


def trace(entries: Sequence[Entry], settled: Settled) -> None:
    """One DEBUG line per settled entry: which key, which stream entry, what was decided."""
    for entry in entries:
        logger.debug("entry settled", extra={
            "action": "entry_settled", "result": settled.result(entry.id), "id": str(entry.id),
            "topic": entry.topic, "event_id": entry.event_id,
            "replay_of": str(entry.replay_of) if entry.replay_of else None})


def decode(raw: Sequence[RawEntry]) -> tuple[list[Entry], list[Unreadable]]:
    """The entries that carry an event, and those that do not (deleted, or not ours)."""
    entries: list[Entry] = []
    unreadable: list[Unreadable] = []
    for raw_id, fields in raw:
        try:
            entries.append(Entry.decode(raw_id, fields))
        except Unreadable as problem:
            logger.error("unreadable stream entry", extra={
                "action": "entry_unreadable", "id": raw_id.decode(), "reason": problem.reason})
            unreadable.append(problem)
    return entries, unreadable
