"""`/stats` as one consistent snapshot (SPEC §3): when it says nothing is pending, its counts
balance, or an alarm says why not.

The figures live in two servers that cannot be read in one transaction: `received` and the
group in Redis, the counters in PostgreSQL. So the broker is read before and after the store.
If nothing was pending before and nothing was received in between, no settling transaction could
commit a count while the store was read (a consumer commits only entries it holds unacked), and
the snapshot holds. Otherwise it says what may be missing from the counts it read: what was
pending before, or else what arrived during the read; never 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.store import Alarm, Store, StoreStats
from shared.stream import Stream


@dataclass(frozen=True, slots=True)
class Snapshot:
    received: int
    pending: int
    counts: StoreStats
    alarms: list[Alarm]

    @property
    def settled(self) -> int:
        return sum(self.counts.total(name)
                   for name in ("unique_processed", "duplicate_dropped", "dead_lettered"))

    @property
    def balanced(self) -> bool:
        """SPEC §4's balance, which must hold whenever nothing is pending."""
        return self.received == self.settled


async def take(stream: Stream, store: Store, *, topics: int | None) -> Snapshot:
    """A snapshot with the `topics` busiest topics (every one when None: tests and tools)."""
    before = await stream.tally()
    counts = await store.stats(topics)
    alarms = await store.alarms()
    after = await stream.tally()
    # `received` only goes back when the broker lost part of its log: a change either way
    # means the counts read may not match `before`.
    moved = abs(after.received - before.received)
    return Snapshot(before.received, before.pending or moved, counts, alarms)
