"""Property: any event that passes the schema is either stored (or counted as a duplicate of a
stored one) or dead-lettered with its reason; none blocks the stream, and the counts are exact.

Every example is published, none is skipped: the schema-valid events ingest would refuse (a NUL
character, an offset beyond ±15:59; `shared/validation.py`) are exactly those PostgreSQL cannot
store, so they reach the stream only from elsewhere, and are what the consumer must dead-letter.
Each example gets event_ids of its own, so that its counts are exact, not bounded by what
earlier examples stored.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson
import psycopg
from hypothesis import HealthCheck, given
from hypothesis import event as label
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from shared.paths import SCHEMA_FILE
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from shared.validation import problems
from tests.helpers import balance, publish, run_until_drained

PREFIX_LENGTH = 9  # the example's own prefix of every event_id: 8 hex digits and a slash


def texts(max_size: int = 255) -> st.SearchStrategy[str]:
    """1 to `max_size` characters: short ones, a few common ones (so that keys repeat), NULs,
    and the longest allowed."""
    return (st.text(min_size=1, max_size=40) | st.sampled_from(["auth", "billing"])
            | st.sampled_from(["a\x00b", "\x00", "é" * max_size]))


scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
payloads = st.dictionaries(st.text(max_size=10), st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8), max_size=4)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 date-times with any offset the format allows (PostgreSQL stores those within
    ±15:59). Years 2 to 9998, so that no offset takes the UTC time out of years 1 to 9999:
    ingest refuses those too, but PostgreSQL could store them."""
    moment = draw(st.datetimes(min_value=datetime(2, 1, 1),
                               max_value=datetime(9998, 12, 31, 23, 59, 59)))
    fraction = draw(st.sampled_from(["", ".5", ".123456", ".123456789"]))
    minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    sign = "+" if minutes >= 0 else "-"
    offset = draw(st.sampled_from(["Z", f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"]))
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}{fraction}{offset}")


events = st.fixed_dictionaries({
    "topic": texts(), "event_id": texts(255 - PREFIX_LENGTH), "timestamp": timestamps(),
    "source": texts(), "payload": payloads,
})

SCHEMA = Draft202012Validator(orjson.loads(SCHEMA_FILE.read_bytes()),
                              format_checker=FormatChecker(["date-time"]))


def rows(sql: psycopg.Connection[Any]) -> tuple[int, int, int]:
    """Rows that record a settled entry: stored events, duplicates, dead letters."""
    row = sql.execute("SELECT (SELECT count(*) FROM events), "
                      "(SELECT count(*) FROM duplicate_entries), "
                      "(SELECT count(*) FROM dead_letters WHERE reason = 'store_rejected')"
                      ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@hypothesis_settings(max_examples=20, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])
@given(drawn=st.lists(events, min_size=1, max_size=10),
       resent=st.lists(st.integers(min_value=0), max_size=4))
async def test_every_event_that_passes_the_schema_is_stored_or_dead_lettered_exactly(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any],
        drawn: list[dict[str, Any]], resent: list[int]) -> None:
    prefix = f"{uuid.uuid4().hex[:8]}/"
    assert len(prefix) == PREFIX_LENGTH
    fresh = [{**e, "event_id": prefix + e["event_id"]} for e in drawn]
    # Some events sent again, as a publisher that lost an answer does.
    batch = fresh + [fresh[i % len(fresh)] for i in resent]
    assert all(SCHEMA.is_valid(e) for e in batch), "the strategy draws schema-valid events"
    unstorable = [e for e in batch if problems([e])]
    storable = [e for e in batch if not problems([e])]
    keys = {(e["topic"], e["event_id"]) for e in storable}
    label("some unstorable" if unstorable else "all storable")
    label("with duplicates" if len(keys) < len(storable) else "no duplicates")

    before, rows_before = await balance(store, stream), rows(sql)
    await publish(stream, batch)
    await run_until_drained(settings, stream, store, max_deliveries=1)

    assert await balance(store, stream) == {
        "received": before["received"] + len(batch), "pending": 0,
        "unique": before["unique"] + len(keys),
        "duplicate": before["duplicate"] + len(storable) - len(keys),
        "dead": before["dead"] + len(unstorable)}
    added = tuple(a - b for a, b in zip(rows(sql), rows_before, strict=True))
    assert added == (len(keys), len(storable) - len(keys), len(unstorable))
