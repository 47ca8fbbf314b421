"""Poison: entries the store rejects. They must not take their batch down, nor block the stream.

A batch the store rejects is settled again entry by entry, so that the good entries around a bad
one are stored. A bad entry stays pending, to be delivered again later (XAUTOCLAIM); once Redis
has delivered it MAX_DELIVERIES times, it is given up on: written to the dead-letter store with
its reason and error, counted in `dead_lettered`, and acked. The delivery count is Redis's own,
so it survives the death of any consumer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import psycopg
import psycopg_pool

from shared.events import Entry
from shared.store import Failure, Settled, Store
from shared.stream import Stream

logger = logging.getLogger(__name__)

# Errors that blame the data: data exceptions (class 22, and psycopg's own refusal to send a
# NUL in text), integrity constraint violations (23), program limits exceeded (54) and errors
# raised by PL/pgSQL (P0: a trigger that refuses a row). Only these lead an entry toward the
# dead letters. Anything else (connection lost, deadlock, server shutting down, disk full, a
# missing table) is the system's fault: the batch is retried as it is, for as long as it takes,
# and nothing is given up on because of it.
DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError)
DATA_ERROR_CLASSES = ("22", "23", "54", "P0")


class Transient(Exception):
    """The store could not settle the batch for a reason that is not the data's: retry it."""


def rejected_by_store(error: psycopg.Error) -> bool:
    return isinstance(error, DATA_ERRORS) or (error.sqlstate or "")[:2] in DATA_ERROR_CLASSES


@contextlib.contextmanager
def system_failures_are_transient() -> Iterator[None]:
    """Let the data's errors through; turn every other store failure into `Transient`."""
    try:
        yield
    except psycopg_pool.PoolTimeout as error:
        raise Transient(str(error)) from error
    except psycopg.Error as error:
        if rejected_by_store(error):
            raise
        raise Transient(_describe(error)) from error


async def settle(store: Store, entries: Sequence[Entry]) -> Settled:
    with system_failures_are_transient():
        return await store.settle(entries)


@dataclass(frozen=True, slots=True)
class Outcome:
    settled: Settled
    settled_entries: list[Entry]
    failures: list[Failure]


@dataclass(frozen=True, slots=True)
class GivenUp:
    ids: list[bytes] = field(default_factory=list)  # entries to ack
    new: int = 0  # dead letters written (not counting letters that existed already)


async def settle_isolating(store: Store, entries: Sequence[Entry]) -> Outcome:
    """Settle the batch in one transaction; if the store rejects it, settle entry by entry."""
    try:
        return Outcome(await settle(store, entries), list(entries), [])
    except psycopg.Error as error:
        logger.warning("batch rejected by the store; settling its entries one by one",
                       extra={"action": "batch_isolated", "entries": len(entries),
                              "error": _describe(error)})
    settled, ok, failures = Settled(), [], []
    for entry in entries:
        # A Transient error here retries the whole batch: what was committed meanwhile settles
        # again as a no-op.
        try:
            settled += await settle(store, [entry])
            ok.append(entry)
        except psycopg.Error as error:
            failures.append(Failure.of_entry(entry, _describe(error)))
    return Outcome(settled, ok, failures)


async def give_up_exhausted(stream: Stream, store: Store, consumer: str, max_deliveries: int,
                            failures: Sequence[Failure]) -> GivenUp:
    """Dead-letter the failures that Redis has delivered `max_deliveries` times (and entries
    that left the stream, which no delivery can bring back); leave the others pending."""
    if not failures:
        return GivenUp()
    counts = await stream.delivery_counts(consumer, [f.raw_id for f in failures])
    exhausted = [dataclasses.replace(f, deliveries=counts.get(f.raw_id, 0)) for f in failures
                 if f.reason == "deleted" or counts.get(f.raw_id, 0) >= max_deliveries]
    given_up_ids = {f.raw_id for f in exhausted}
    for failure in failures:
        given_up = failure.raw_id in given_up_ids
        logger.warning("entry %s: %s", "dead-lettered" if given_up else "left pending",
                       failure.error, extra={
                           "action": "entry_dead_lettered" if given_up else "entry_failed",
                           "id": str(failure.id), "reason": failure.reason,
                           "deliveries": counts.get(failure.raw_id, 0)})
    with system_failures_are_transient():
        new = await store.dead_letter(exhausted)
    return GivenUp([f.raw_id for f in exhausted], new)


def _describe(error: psycopg.Error) -> str:
    state = f"[{error.sqlstate}] " if error.sqlstate else ""
    return f"{state}{type(error).__name__}: {str(error).strip()}"
