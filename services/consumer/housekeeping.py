"""Housekeeping: keep the stream and the group from growing without bound, and report them.

Every consumer does it now and then; doing it twice at once is harmless. Settled entries are
trimmed (never one that is pending or not yet delivered) and the store's settled floor rises to
the same point, pruning the duplicate ledger below it; consumers that are gone (nothing pending,
idle for CONSUMER_GONE_MS) are removed from the group; the counter shards settled since the
last round are folded into the topics' totals, which keeps what `/stats` reads small whatever
the number of topics (sql/0007_counter_totals.sql); the group's gauges (unacked, lag, age of
the oldest unacked entry) are refreshed; and the invariants that need a look at both servers
are checked (`invariants.py`: the broker's history, the balance).
"""

from __future__ import annotations

import logging
import time

from services.consumer import invariants
from services.consumer.retention import Keeper
from shared.metrics import record_group_state
from shared.settings import Settings
from shared.store import FOLD_ROWS, Store
from shared.stream import Stream

logger = logging.getLogger(__name__)

INTERVAL_S = 5.0
# Folds of FOLD_ROWS counter shard rows one round makes at most (about 40 ms each): a backlog
# of them, such as a database settled before the totals existed, is folded over several rounds
# instead of holding up this consumer's batches.
FOLD_PARTS = 5


class Housekeeping:
    def __init__(self, stream: Stream, store: Store, settings: Settings,
                 interval_s: float = INTERVAL_S) -> None:
        self.stream = stream
        self.store = store
        self.gone_ms = settings.consumer_gone_ms
        self.keeper = Keeper(store, store.retention)
        self.interval_s = interval_s
        self._next = time.monotonic() + interval_s

    def due(self) -> bool:
        return time.monotonic() >= self._next

    async def run(self) -> None:
        self._next = time.monotonic() + self.interval_s
        # The clock before the group's state: an entry added after that look is stamped later.
        now_ms = await self.stream.clock_ms()
        state = await self.stream.group_state()
        record_group_state(state)
        trimmed = 0
        pruned: int | None = 0
        if state.settled_below is not None:
            # The floor first, then the trim, and only once the floor has risen: a settled
            # entry at or above the floor stays in the stream, which the broker's history
            # check relies on (invariants.py).
            pruned = await self.store.raise_floor(state.settled_below)
            if pruned is None:
                logger.warning("the settled floor is held still by a settling transaction; "
                               "trying again next round", extra={"action": "floor_busy"})
            else:
                trimmed = await self.stream.trim_below(state.settled_below)
        removed = await self.stream.remove_gone_consumers(self.gone_ms)
        folded = await self.fold_counters()
        kept = await self.keeper.run(now_ms, state, await self.store.floor())
        await invariants.check_broker_history(self.stream, self.store)
        await invariants.check_balance(self.stream, self.store)
        if trimmed or pruned or removed or folded or kept:
            logger.info("housekeeping", extra={
                "action": "housekeeping", "trimmed": trimmed, "ledger_pruned": pruned,
                "consumers_removed": len(removed), "counters_folded": folded,
                "generation_turned": kept.turned, "generations_forgotten": kept.forgotten,
                "partitions_added": kept.partitions_added,
                "partitions_dropped": kept.partitions_dropped,
                "dead_letters_expired": kept.dead_letters_expired})

    async def make_partitions(self) -> None:
        """At a consumer's start, before it settles anything: the partitions of `events` its
        retention needs, so that no event is placed short (alarm `retention_misplaced`)."""
        await self.keeper.partitions(await self.stream.clock_ms())

    async def fold_counters(self) -> int:
        """Fold counter shard rows, FOLD_PARTS parts at most; return how many rows. Another
        consumer folding at the same time makes this round fold nothing."""
        folded = 0
        for _ in range(FOLD_PARTS):
            moved = await self.store.fold_counters()
            folded += moved or 0
            if moved is None or moved < FOLD_ROWS:
                break
        return folded
