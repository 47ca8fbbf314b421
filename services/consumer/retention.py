"""Retention and the dedup window, kept by housekeeping: both go a whole partition at a time.

**The dedup window** (SPEC §4). A stream's new keys go into its current generation of
`dedup_keys`; every GENERATIONS_PER_WINDOW-th of the window a new generation opens, under the
exclusive floor lock, so no settling transaction still writes to the one that closed, and a
key is in one live generation at most (sql/0008_retention.sql). Every key of a generation
closed at C was first accepted at or before C (its position was in the stream when it was
stored, and positions are stamped by the clock that gives C). A copy of such a key is inside
the window if it was received before C + window. So the generation is dropped once every entry
received before C + window has been settled:
- the settled floor is at or past C + window, or
- nothing of the stream is pending and the stream's clock, read before the group's state, is
  past C + window (an idle stream forgets too; entries added after that look are stamped later).
Then every copy received inside the window of any of its keys met the key and was counted a
duplicate; a copy received later is stored again and counted as unique. A key is remembered for
at least the window, and forgotten at most a generation (a quarter of the window) plus the time
its stream takes to settle past it later.
What could still break it is detected: the stream's horizon (`forgotten_ms`) rises to C +
window; an entry received before it and stored as new (a delivery held back for longer than
that, or a broker whose clock went back) raises `dedup_window_missed`.

**Dead letters** go DEAD_LETTER_DAYS after their event was received, a bounded number a round
(they are few), once below the settled floor and the forgotten horizon too, where a late
delivery of their entry changes nothing without them.

**Retention.** Events are partitioned by expiry (received time + the topic's retention). The
partitions of the next `longest retention + 2 partitions` are made ahead, and a partition whose
upper bound is past (every expiry in it is) is dropped. Both happen under the partitions lock,
which settling transactions hold shared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.entries import StreamId
from shared.retention import Retention
from shared.store import Store
from shared.stream import GroupState

logger = logging.getLogger(__name__)

# Partitions of `events` made ahead beyond the longest retention: the events settled during
# two partitions' time, should housekeeping stop for that long, still find theirs.
PARTITIONS_AHEAD = 2


@dataclass(frozen=True, slots=True)
class Kept:
    """What a round did."""

    turned: bool = False
    forgotten: int = 0  # generations dropped
    partitions_added: int = 0
    partitions_dropped: int = 0
    dead_letters_expired: int = 0

    def __bool__(self) -> bool:
        return bool(self.turned or self.forgotten or self.partitions_added
                    or self.partitions_dropped or self.dead_letters_expired)


class Keeper:
    def __init__(self, store: Store, retention: Retention) -> None:
        self.store = store
        self.retention = retention

    async def run(self, now_ms: int, state: GroupState, floor: StreamId) -> Kept:
        """One round. `now_ms`: the stream's clock, read before `state`; `floor`: the settled
        floor as it stands."""
        turned = await self.turn(now_ms)
        forgotten = await self.forget(now_ms, state, floor)
        added, dropped = await self.partitions(now_ms)
        expired = 0
        if self.retention.dead_letter_ms:
            expired = await self.store.expire_dead_letters(
                now_ms - self.retention.dead_letter_ms)
        return Kept(turned, forgotten, added, dropped, expired)

    async def turn(self, now_ms: int) -> bool:
        current = (await self.store.generations()).current
        if current is None or current.opened_ms is None:
            return False
        if now_ms < current.opened_ms + self.retention.generation_ms:
            return False
        return await self.store.turn_generation(now_ms)

    async def forget(self, now_ms: int, state: GroupState, floor: StreamId) -> int:
        settled_to = floor.ms
        if state.exists and state.pending == 0:
            settled_to = max(settled_to, now_ms)
        forgotten = 0
        for generation in (await self.store.generations()).older:
            assert generation.closed_ms is not None
            window_end = generation.closed_ms + self.retention.window_ms
            if window_end <= settled_to and await self.store.forget_generation(
                    generation.id, window_end):
                forgotten += 1
        return forgotten

    async def partitions(self, now_ms: int) -> tuple[int, int]:
        """Make the partitions of `events` ahead, and drop the expired ones."""
        width = self.retention.partition_ms
        existing = await self.store.event_partitions()
        drop = [lower for lower, upper in existing if upper <= now_ms]
        add: list[tuple[int, int]] = []
        if self.retention.longest_ms:
            until = now_ms + self.retention.longest_ms + PARTITIONS_AHEAD * width
            # Contiguous with the newest, unless every partition is past (all dropped here).
            newest = existing[-1][1] if existing else 0
            lower = newest if newest > now_ms else now_ms // width * width
            while lower < until:
                add.append((lower, lower + width))
                lower += width
        if (add or drop) and not await self.store.change_event_partitions(add, drop):
            logger.warning("the partitions of events are held by settling transactions; "
                           "trying again next round", extra={"action": "partitions_busy"})
            return 0, 0
        return len(add), len(drop)
