"""Dead letters: an entry the store cannot settle must not take its batch down, nor block the
stream.

A batch is settled in one transaction, or in one per part of at most STATEMENT_BYTES of events
when they are large. A transaction that fails for any reason but an outage (the retry policy
judges which: `retry.py`) is settled again entry by entry, so that the good entries around a
bad one are stored. An entry that fails alone, because the store rejects its data
(`store_rejected`) or with any other error of the store (`store_failed`: a lock it waits for, a
server limit it exceeds), stays pending, to be delivered again later (`recovery.py` claims
it); once Redis has delivered it MAX_DELIVERIES times, it is given up on: written to the
dead-letter store with its reason and error, counted in `dead_lettered`, and acked. The
delivery count is Redis's own, so it survives the death of any consumer. An outage goes up to
the retry policy, which retries the whole batch: nothing is dead-lettered for it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from services.consumer import retry
from shared.entries import Entry
from shared.exceptions import EntryRejected, StoreUnavailable
from shared.store import Failure, Settled, Store
from shared.stream import Stream

logger = logging.getLogger(__name__)

# The most event bytes one settling statement carries. The store settles in a psycopg pipeline,
# and psycopg 3.3 flushes a pipeline's output once per step (generators.pipeline_communicate),
# not until libpq's buffer is empty, before it waits for results: the end of a statement larger
# than a few flushes move is never sent, PostgreSQL waits for it, and no timeout ends the wait
# (over about 10 MiB on a loopback). 4 MiB is 500 events of 8 KiB: a batch of typical events
# stays one transaction.
STATEMENT_BYTES = 4 * 1024 * 1024


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
    """Settle the batch, one transaction for each part of at most STATEMENT_BYTES (the whole
    batch, for typical events); a part whose transaction fails, and not for an outage, entry
    by entry. An outage goes up (`retry.until_done` retries the whole batch): what was
    committed meanwhile settles again as a no-op."""
    settled, ok, failures = Settled(), [], []
    for part in parts(entries, STATEMENT_BYTES):
        try:
            settled += await retry.settling(functools.partial(store.settle, part))
            ok += part
            continue
        except (EntryRejected, StoreUnavailable) as error:
            if await retry.is_outage(store, error):
                raise
            logger.warning("settling transaction failed while the store answers; settling its "
                           "entries one by one", extra={
                               "action": "batch_isolated", "entries": len(part),
                               "error": str(error)})
        for entry in part:
            try:
                settled += await retry.settling(functools.partial(store.settle, [entry]))
                ok.append(entry)
            except (EntryRejected, StoreUnavailable) as error:
                if await retry.is_outage(store, error):
                    raise
                failure = Failure.of_entry(entry, str(error))
                if not isinstance(error, EntryRejected):
                    failure = dataclasses.replace(failure, reason="store_failed")
                failures.append(failure)
    return Outcome(settled, ok, failures)


def parts(entries: Sequence[Entry], limit: int) -> Iterator[list[Entry]]:
    """The entries in order, in runs whose events weigh at most `limit` bytes (as they were in
    the stream), or one entry if it alone weighs more."""
    part: list[Entry] = []
    size = 0
    for entry in entries:
        if part and size + len(entry.raw_event) > limit:
            yield part
            part, size = [], 0
        part.append(entry)
        size += len(entry.raw_event)
    if part:
        yield part


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
    new = await store.dead_letter(exhausted)
    return GivenUp([f.raw_id for f in exhausted], new)
