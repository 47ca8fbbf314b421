"""Retention and the dedup window (SPEC §4, sql/0008_retention.sql,
services/consumer/retention.py), driven by short settings and by the clock housekeeping is
given: positions are chosen, so that a window or a partition is crossed without waiting for it.

Every count is checked across each boundary: the window's (a key remembered, then forgotten), a
generation's turn, and a partition's drop."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import orjson
import psycopg

from services.consumer.retention import Keeper
from shared.constants import EVENT_FIELD
from shared.entries import Entry, StreamId
from shared.retention import KEPT, Retention
from shared.store import Failure, Settled, Store
from shared.stream import GroupState
from tests.helpers import event

SECOND = 1000
# The dedup window of these tests: 40 s of positions, a generation every 10 s.
WINDOW = 40 * SECOND
# Something is pending: housekeeping forgets by the settled floor only.
BUSY = GroupState(exists=True, unacked=1, lag=0)
IDLE = GroupState(exists=True, unacked=0, lag=0)
T0 = 1_800_000_000_000  # positions of these tests start here (ms)


def entry(ms: int, event_id: str, *, seq: int = 0, topic: str = "auth",
          source: str = "svc") -> Entry:
    raw = orjson.dumps(event(event_id, topic, source=source))
    return Entry.decode(f"{ms}-{seq}".encode(), {EVENT_FIELD: raw})


def windowed(store: Store, **changes: Any) -> Store:
    retention = Retention(**{"window_ms": WINDOW, "partition_ms": 10 * SECOND, **changes})
    return Store(store.pool, store.stream, retention)


def decided(settled: Settled) -> tuple[int, int]:
    return settled.unique_total, settled.duplicate_total


def rows(sql: psycopg.Connection[Any], query: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in sql.execute(query, list(args)).fetchall()]


async def test_a_key_is_remembered_for_the_window_then_forgotten(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    store = windowed(store)
    keeper = Keeper(store, store.retention)
    assert decided(await store.settle([entry(T0, "k")])) == (1, 0)
    # The generation holding the key turns at T0 + 10 s; a copy in the next one is caught.
    assert (await keeper.run(T0 + 10 * SECOND, BUSY, StreamId(T0 + 10 * SECOND, 0))).turned
    closed = (await store.generations()).older[0].closed_ms
    assert closed == T0 + 10 * SECOND
    assert decided(await store.settle([entry(T0 + 20 * SECOND, "k")])) == (0, 1)
    # The window of the key ends at closed + WINDOW at the latest; until every entry received
    # before that is settled (the floor), the key stays, however late the clock is.
    await store.raise_floor(StreamId(closed + WINDOW - 1, 0))
    await keeper.run(closed + 10 * WINDOW, BUSY, await store.floor())
    assert decided(await store.settle([entry(closed + WINDOW - 1, "k", seq=1)])) == (0, 1)
    # Once it is, the generation goes: a copy received after the window is stored again.
    await store.raise_floor(StreamId(closed + WINDOW, 0))
    kept = await keeper.run(closed + WINDOW, BUSY, await store.floor())
    assert kept.forgotten == 1
    assert (await store.generations()).forgotten_ms == closed + WINDOW
    again = await store.settle([entry(closed + WINDOW, "k")])
    assert decided(again) == (1, 0) and not again.late
    stats = await store.stats()
    assert (stats.total("unique_processed"), stats.total("duplicate_dropped")) == (2, 2)
    assert rows(sql, "SELECT stream_ms FROM events WHERE event_id = 'k' ORDER BY 1") == [
        (T0,), (closed + WINDOW,)]


async def test_forgetting_drops_a_partition_and_never_deletes(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    store = windowed(store)
    keeper = Keeper(store, store.retention)
    await store.settle([entry(T0 + i, f"k{i}") for i in range(500)])
    first = (await store.generations()).current
    assert first is not None
    await keeper.run(T0 + 10 * SECOND, BUSY, StreamId(0, 0))
    await store.raise_floor(StreamId(T0 + 10 * SECOND + WINDOW, 0))
    assert (await keeper.run(T0 + 10 * SECOND + WINDOW, BUSY, await store.floor())).forgotten
    assert rows(sql, "SELECT count(*) FROM pg_class WHERE relname = %s",
                f"dedup_keys_g{first.id}") == [(0,)]
    deleted = rows(sql, "SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables "
                        "WHERE relname LIKE 'dedup_keys%%'")
    assert deleted == [(0,)]


async def test_an_idle_stream_forgets_by_the_clock(store: Store) -> None:
    store = windowed(store)
    keeper = Keeper(store, store.retention)
    await store.settle([entry(T0, "k")])
    await keeper.run(T0 + 10 * SECOND, IDLE, StreamId(0, 0))
    closed = T0 + 10 * SECOND
    # Busy: the floor decides, and it is low. Idle: nothing can be settled later that was
    # received before the clock, which is past the window.
    assert not (await keeper.run(closed + WINDOW, BUSY, StreamId(0, 0))).forgotten
    assert (await keeper.run(closed + WINDOW, IDLE, StreamId(0, 0))).forgotten == 1
    assert decided(await store.settle([entry(closed + WINDOW, "k")])) == (1, 0)


async def test_redeliveries_across_the_window_change_nothing(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    store = windowed(store)
    keeper = Keeper(store, store.retention)
    stored, duplicate = entry(T0, "k"), entry(T0 + 1, "k")
    assert decided(await store.settle([stored, duplicate])) == (1, 1)
    # Across a turn: the key is in an older generation; both entries are redeliveries.
    await keeper.run(T0 + 10 * SECOND, BUSY, StreamId(0, 0))
    assert decided(await store.settle([stored, duplicate])) == (0, 0)
    # Across the window: the key is forgotten, and the floor is past both entries, which were
    # settled: a consumer held up that long, coming back with them, changes nothing.
    await store.raise_floor(StreamId(T0 + 10 * SECOND + WINDOW, 0))
    await keeper.run(T0 + 10 * SECOND + WINDOW, BUSY, await store.floor())
    assert (await store.generations()).forgotten_ms == T0 + 10 * SECOND + WINDOW
    late = await store.settle([stored, duplicate])
    assert decided(late) == (0, 0) and not late.late
    stats = await store.stats()
    assert (stats.total("unique_processed"), stats.total("duplicate_dropped")) == (1, 1)
    assert rows(sql, "SELECT count(*) FROM events") == [(1,)]


async def test_an_entry_received_before_the_horizon_and_stored_is_reported(
        store: Store) -> None:
    store = windowed(store)
    keeper = Keeper(store, store.retention)
    await store.settle([entry(T0, "k")])
    await keeper.run(T0 + 10 * SECOND, BUSY, StreamId(0, 0))
    # Idle by the clock: forgotten. Then an entry stamped before the horizon arrives above the
    # floor (the broker's clock went back): stored as new, and reported.
    await keeper.run(T0 + 10 * SECOND + WINDOW, IDLE, StreamId(0, 0))
    settled = await store.settle([entry(T0 + 5 * SECOND, "k")])
    assert decided(settled) == (1, 0)
    assert settled.late == {StreamId(T0 + 5 * SECOND, 0)}


async def test_the_first_accepted_copy_wins_across_a_turn(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    store = windowed(store)
    keeper = Keeper(store, store.retention)
    # The later copy commits first, the generation turns, then the earlier copy settles.
    assert decided(await store.settle([entry(T0 + 2, "k", source="second")])) == (1, 0)
    await keeper.run(T0 + 10 * SECOND, BUSY, StreamId(0, 0))
    assert decided(await store.settle([entry(T0 + 1, "k", source="first")])) == (0, 1)
    assert rows(sql, "SELECT source, stream_ms FROM events") == [("first", T0 + 1)]
    # Redeliveries of both: nothing.
    again = await store.settle([entry(T0 + 1, "k", source="first"),
                                entry(T0 + 2, "k", source="second")])
    assert decided(again) == (0, 0)
    older = (await store.generations()).older[0].id
    assert rows(sql, "SELECT generation, stream_ms FROM dedup_keys") == [(older, T0 + 1)]


async def test_the_settled_floor_holds_across_a_turn(store: Store) -> None:
    store = windowed(store)
    keeper = Keeper(store, store.retention)
    await store.settle([entry(T0, "k")])
    await keeper.run(T0 + 10 * SECOND, BUSY, StreamId(0, 0))
    await store.raise_floor(StreamId(T0 + 5, 0))
    # A copy below the floor is not counted (its ledger row may be pruned: SPEC §4), one above
    # is, whichever generation holds the key.
    below = await store.settle([entry(T0 + 4, "k")])
    above = await store.settle([entry(T0 + 6, "k")])
    assert decided(below) == (0, 0) and decided(above) == (0, 1)


async def test_concurrent_consumers_count_each_entry_once_while_the_window_is_crossed(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    """Four transactions at a time settle overlapping batches (copies and redeliveries) while
    housekeeping turns generations, then forgets the first ones, as the floor passes their
    window: copies inside a window are duplicates, each entry is counted once, a key is in
    one live generation at most, and the counters match the rows."""
    store = windowed(store, window_ms=4 * SECOND)  # a generation each second
    keeper = Keeper(store, store.retention)
    rng = random.Random(12)
    keys = [f"k{i}" for i in range(60)]
    # Round one: copies of each key inside one window. Round two, past the window of round
    # one: copies again, settled along with redeliveries of round one, while it is forgotten.
    one = [entry(T0 + rng.randrange(1500), rng.choice(keys), seq=i) for i in range(600)]
    two = [entry(T0 + 60 * SECOND + rng.randrange(1500), rng.choice(keys), seq=i)
           for i in range(600)]
    stop = asyncio.Event()
    clock = T0
    forgotten = 0

    async def housekeeping() -> None:
        nonlocal clock, forgotten
        while not stop.is_set():
            clock += SECOND
            forgotten += (await keeper.run(clock, BUSY, await store.floor())).forgotten
            await asyncio.sleep(0)

    async def settle(pool: list[Entry], rounds: int) -> list[Settled]:
        results: list[Settled] = []
        for _ in range(rounds):
            batches = [sorted(rng.sample(pool, 30), key=lambda e: e.id) for _ in range(4)]
            results += await asyncio.gather(*(store.settle(b) for b in batches))
        return results

    keeping = asyncio.create_task(housekeeping())
    first = await settle(one, 25)
    settled_one = set().union(*(r.unique | r.duplicate for r in first))
    assert sum(r.unique_total for r in first) == len({e.event_id for e in one
                                                     if e.id in settled_one})
    # Everything of round one was settled: the floor passes it, and only what was settled
    # comes again (a consumer held up, redelivering its batch).
    assert await store.raise_floor(StreamId(T0 + 60 * SECOND, 0)) is not None
    second = await settle(two + [e for e in one if e.id in settled_one], 25)
    stop.set()
    await keeping
    assert forgotten >= 1, "round one's generations went while round two settled"

    results = first + second
    settled = set().union(*(r.unique | r.duplicate for r in results))
    unique = [p for r in results for p in r.unique]
    duplicate = [p for r in results for p in r.duplicate]
    assert len(unique) == len(set(unique)) and len(duplicate) == len(set(duplicate))
    stored = {StreamId(ms, seq) for ms, seq in rows(
        sql, "SELECT stream_ms, stream_seq FROM events")}
    # Each settled entry is the stored copy of its key, or a duplicate, counted once.
    # Each settled entry ends as the stored copy of its key (the first accepted: one stored
    # first may be displaced by an earlier copy, which then takes its place unreported) or as
    # a duplicate, counted once.
    assert stored.isdisjoint(duplicate) and settled <= stored | set(duplicate)
    assert stored <= {e.id for e in one + two}
    # Round one's entries counted in round two: none (they were settled, below the floor).
    assert not any((r.unique | r.duplicate) & {e.id for e in one} for r in second)
    # A key is stored at most once per round, and once in round one.
    by_key: dict[str, list[StreamId]] = {}
    for position in stored:
        by_key.setdefault(next(e.event_id for e in one + two if e.id == position),
                          []).append(position)
    assert all(sorted(p.ms >= T0 + 60 * SECOND for p in ps) in ([False], [False, True])
               for ps in by_key.values())
    stats = await store.stats()
    assert stats.total("unique_processed") == len(unique) == len(stored)
    assert stats.total("duplicate_dropped") == len(duplicate)
    twice = rows(sql, "SELECT topic, event_id FROM dedup_keys GROUP BY 1, 2 HAVING count(*) > 1")
    assert twice == []


async def test_events_go_with_their_partition_after_their_retention(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    """Retention by received time, per topic; counters stay; a partition dropped, no DELETE."""
    store = windowed(store, default_ms=30 * SECOND, topic_ms={"audit": 0, "debug": 10 * SECOND})
    keeper = Keeper(store, store.retention)
    assert await keeper.partitions(T0) == (5, 0)  # 30 s + 2 partitions of 10 s, ahead
    await store.settle([entry(T0 + i, f"a{i}") for i in range(5)]
                       + [entry(T0 + 5, "keep", topic="audit"),
                          entry(T0 + 6, "noise", topic="debug")])
    assert rows(sql, "SELECT count(*) FROM events_kept") == [(1,)]
    # The debug event expires at T0 + 10 s: its partition goes when it is past (with the one
    # before it, empty).
    _, dropped = await keeper.partitions(T0 + 20 * SECOND)
    assert dropped == 2
    assert rows(sql, "SELECT topic FROM events ORDER BY stream_ms") == [("auth",)] * 5 + [
        ("audit",)]
    _, dropped = await keeper.partitions(T0 + 40 * SECOND)
    assert dropped >= 1
    assert rows(sql, "SELECT topic FROM events") == [("audit",)]
    stats = await store.stats()
    assert stats.total("unique_processed") == 7
    assert rows(sql, "SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables "
                     "WHERE relname LIKE 'events%%'") == [(0,)]
    # An event settled after its expiry is kept until the oldest partition goes; one whose
    # retention reaches past every partition is reported.
    late = await store.settle([entry(T0 + 7, "late")])
    assert decided(late) == (1, 0) and not late.misplaced
    far = windowed(store, default_ms=3_600 * SECOND)
    beyond = await far.settle([entry(T0 + 8, "far")])
    assert beyond.misplaced == {StreamId(T0 + 8, 0)}


async def test_partitions_are_made_ahead_and_dropped_on_time_across_a_restart(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    retention = Retention(default_ms=20 * SECOND, partition_ms=10 * SECOND)
    first = Keeper(Store(store.pool, store.stream, retention), retention)
    await first.partitions(T0)
    made = await store.event_partitions()
    assert made[0][0] <= T0 and made[-1][1] >= T0 + 40 * SECOND
    # A new process (nothing kept in memory) carries on from what the database holds: the
    # partitions stay contiguous, and the past ones go.
    second = Keeper(Store(store.pool, store.stream, retention), retention)
    added, dropped = await second.partitions(T0 + 25 * SECOND)
    after = await store.event_partitions()
    assert dropped == 2 and added >= 2
    assert all(a[1] == b[0] for a, b in itertools.pairwise(after))
    assert after[0][1] > T0 + 25 * SECOND and after[-1][1] >= T0 + 65 * SECOND
    names = rows(sql, "SELECT relname FROM pg_class WHERE relname LIKE 'events_p%%' "
                      "AND relkind = 'r' ORDER BY 1")
    assert names == sorted((f"events_p{lower}",) for lower, _ in after)
    assert after[-1][1] < KEPT


async def test_dead_letters_go_after_their_days_and_their_late_deliveries_change_nothing(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    store = windowed(store, dead_letter_ms=60 * SECOND)
    keeper = Keeper(store, store.retention)
    given_up = entry(T0, "bad")
    assert await store.dead_letter([Failure.of_entry(given_up, "refused")]) == 1
    await store.settle([entry(T0 + 1, "k")])
    # Not yet: the letter's 60 s have not passed.
    await keeper.run(T0 + 10 * SECOND, BUSY, StreamId(0, 0))
    await store.raise_floor(StreamId(T0 + 10 * SECOND + WINDOW, 0))
    assert (await keeper.run(T0 + 59 * SECOND, BUSY, await store.floor())).forgotten
    assert [letter.event_id for letter in await store.dead_letters()] == ["bad"]
    # Then it goes; its count stays, and a late delivery of its entry stores nothing.
    assert (await keeper.run(T0 + 61 * SECOND, BUSY,
                             await store.floor())).dead_letters_expired == 1
    assert await store.dead_letters() == []
    assert decided(await store.settle([given_up])) == (0, 0)
    stats = await store.stats()
    assert (stats.total("unique_processed"), stats.total("dead_lettered")) == (1, 1)
    assert rows(sql, "SELECT event_id FROM events") == [("k",)]
