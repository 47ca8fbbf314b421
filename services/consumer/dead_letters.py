"""Dead letters: entries the store rejects must not take their batch down, nor block the stream.

A batch the store rejects (`EntryRejected`: the data's fault) is settled again entry by entry,
so that the good entries around a bad one are stored. A bad entry stays pending, to be delivered
again later (`recovery.py` claims it); once Redis has delivered it MAX_DELIVERIES times, it is
given up on: written to the dead-letter store with its reason and error, counted in
`dead_lettered`, and acked. The delivery count is Redis's own, so it survives the death of any
consumer. Any other failure (`StoreUnavailable`, `StoreConflict`) goes up to the retry policy
(`retry.py`), which retries the whole batch: nothing is dead-lettered for it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.entries import Entry
from shared.exceptions import EntryRejected
from shared.store import Failure, Settled, Store
from shared.stream import Stream

logger = logging.getLogger(__name__)


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
        return Outcome(await store.settle(entries), list(entries), [])
    except EntryRejected as error:
        logger.warning("batch rejected by the store; settling its entries one by one",
                       extra={"action": "batch_isolated", "entries": len(entries),
                              "error": str(error)})
    settled, ok, failures = Settled(), [], []
    for entry in entries:
        # Any other failure here retries the whole batch: what was committed meanwhile settles
        # again as a no-op.
        try:
            settled += await store.settle([entry])
            ok.append(entry)
        except EntryRejected as error:
            failures.append(Failure.of_entry(entry, str(error)))
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
    new = await store.dead_letter(exhausted)
    return GivenUp([f.raw_id for f in exhausted], new)
