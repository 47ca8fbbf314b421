"""Property: any event that passes validation is either stored or dead-lettered with its reason;
none blocks the stream, and the counts balance."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import psycopg
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from shared.validation import problems
from tests.helpers import eventually
from tests.integration.test_consumer import consumer, drained, running

texts = st.text(min_size=1, max_size=40) | st.sampled_from(["a\x00b", "\x00", "é" * 255])
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
payloads = st.dictionaries(st.text(max_size=10), st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8), max_size=4)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 date-times over the whole range the format allows, offsets included."""
    moment = draw(st.datetimes())
    fraction = draw(st.sampled_from(["", ".5", ".123456", ".123456789"]))
    minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    sign = "+" if minutes >= 0 else "-"
    offset = draw(st.sampled_from(["Z", f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"]))
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}{fraction}{offset}")


events = st.fixed_dictionaries({
    "topic": texts, "event_id": texts, "timestamp": timestamps(), "source": texts,
    "payload": payloads,
})


def settled_rows(sql: psycopg.Connection[Any]) -> tuple[int, int, int]:
    """Rows that record a settled entry: stored events, duplicates, dead letters."""
    row = sql.execute("SELECT (SELECT count(*) FROM events), "
                      "(SELECT count(*) FROM duplicate_entries), "
                      "(SELECT count(*) FROM dead_letters)").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@hypothesis_settings(max_examples=20, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])
@given(batch=st.lists(events, min_size=1, max_size=12))
async def test_every_valid_event_is_stored_or_dead_lettered_and_the_counts_balance(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        batch: list[dict[str, Any]]) -> None:
    valid = [e for e in batch if not problems([e])]
    if not valid:
        return
    before = settled_rows(sql)
    received_before = await stream.received()
    await stream.publish([orjson.dumps(e) for e in valid])
    fast = dataclasses.replace(settings, max_deliveries=1)
    async with running(consumer(fast, stream, store, "worker")):
        await eventually(lambda: drained(stream), what="every entry settled")
    stored, duplicates, dead = (a - b for a, b in zip(settled_rows(sql), before, strict=True))
    keys = {(e["topic"], e["event_id"]) for e in valid}
    counts = await store.stats()
    event("some dead-lettered" if dead else "all stored")
    # Every entry ends as exactly one of: the stored copy, a duplicate, a dead letter.
    assert stored + duplicates + dead == len(valid)
    assert stored <= len(keys)
    assert await stream.received() - received_before == len(valid)
    assert await stream.received() == (counts.total("unique_processed")
                                       + counts.total("duplicate_dropped")
                                       + counts.total("dead_lettered"))
