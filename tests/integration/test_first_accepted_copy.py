"""The first accepted copy is stored (SPEC §2): the copy with the earliest stream position,
whatever order consumers commit in. Counts are those of any other order, and a redelivery of
the displaced copy counts nothing."""

from __future__ import annotations

from typing import Any

import psycopg

from shared.store import Store
from shared.stream import Stream
from tests.helpers import balance, event, publish, settle_like_a_consumer


def stored_row(sql: psycopg.Connection[Any], event_id: str) -> tuple[Any, ...]:
    row = sql.execute("SELECT source, stream_ms, stream_seq FROM events WHERE event_id = %s",
                      [event_id]).fetchone()
    assert row is not None
    return tuple(row)


async def test_copies_settled_out_of_order_end_with_the_earliest_stored(
        stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    await stream.ensure_group()
    # Three copies of one key, each from another source, in stream order first, second, third.
    await publish(stream, [event("k", source=name) for name in ("first", "second", "third")],
                  batch=1)
    first, second, third = [await stream.read_new(f"c{i}", 1, 10) for i in range(3)]

    # The last one commits first, then the middle one: each moves the stored row back.
    assert (await settle_like_a_consumer(stream, store, third)).unique_total == 1
    moved = await settle_like_a_consumer(stream, store, second)
    assert (moved.unique_total, moved.duplicate_total) == (0, 1)
    assert stored_row(sql, "k")[0] == "second"
    await settle_like_a_consumer(stream, store, first)
    source, ms, seq = stored_row(sql, "k")
    assert source == "first" and f"{ms}-{seq}".encode() == first[0][0]
    counted = await balance(store, stream)
    assert counted == {"received": 3, "pending": 0, "unique": 1, "duplicate": 2, "dead": 0}

    # Redeliveries of each copy (killed between COMMIT and XACK) change nothing.
    for copy in (third, second, first):
        again = await settle_like_a_consumer(stream, store, copy)
        assert (again.unique_total, again.duplicate_total) == (0, 0)
    assert await balance(store, stream) == counted
    assert stored_row(sql, "k")[0] == "first"
    ledger = sql.execute("SELECT count(*) FROM duplicate_entries").fetchone()
    assert ledger == (2,)  # the third and the second copy


async def test_a_later_copy_in_the_same_batch_never_displaces_the_earlier(
        stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    await stream.ensure_group()
    await publish(stream, [event("k", source=name) for name in ("first", "second")])
    settled = await settle_like_a_consumer(stream, store, await stream.read_new("c", 10, 10))
    assert (settled.unique_total, settled.duplicate_total) == (1, 1)
    assert stored_row(sql, "k")[0] == "first"
