"""The simulator's workload: exact counts, byte-identical late re-sends, valid events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from services.publisher.simulator import Workload, workload

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema" / "event.schema.json"
TOPICS = ["auth", "billing", "orders", "search", "payments"]


def key(event: bytes) -> tuple[str, str]:
    parsed = orjson.loads(event)
    return parsed["topic"], parsed["event_id"]


@pytest.fixture(scope="module")
def standard() -> Workload:
    return workload(20_000, 0.3, TOPICS, seed=7)


def test_a_thirty_percent_workload_has_exact_unique_and_duplicate_counts(
        standard: Workload) -> None:
    assert (standard.events, standard.unique_keys, standard.duplicates) == (20_000, 14_000, 6_000)
    assert len(standard.encoded) == 20_000
    assert len({key(event) for event in standard.encoded}) == 14_000


def test_every_duplicate_is_byte_identical_to_an_earlier_event(standard: Workload) -> None:
    first_copy: dict[tuple[str, str], bytes] = {}
    resends = 0
    for event in standard.encoded:
        if key(event) in first_copy:
            resends += 1
            assert event == first_copy[key(event)]
        else:
            first_copy[key(event)] = event
    assert resends == 6_000


def test_duplicates_always_come_after_their_original(standard: Workload) -> None:
    # The simulator stamps its unique events with rising timestamps, in the order it makes them.
    # If a re-send ever overtook its original, the first copies would go out of that order.
    first_copies: dict[tuple[str, str], str] = {}
    for event in standard.encoded:
        first_copies.setdefault(key(event), orjson.loads(event)["timestamp"])
    stamps = list(first_copies.values())
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)


def test_duplicates_are_spread_through_the_run_not_bunched_at_the_end(
        standard: Workload) -> None:
    seen: set[bytes] = set()
    resend_positions = []
    for index, event in enumerate(standard.encoded):
        if event in seen:
            resend_positions.append(index)
        seen.add(event)
    assert resend_positions[0] < 2_000
    assert any(10_000 < index < 15_000 for index in resend_positions)


def test_the_same_seed_gives_the_same_bytes() -> None:
    assert workload(500, 0.3, TOPICS, seed=42) == workload(500, 0.3, TOPICS, seed=42)


def test_a_different_seed_gives_different_event_ids() -> None:
    first = {key(e)[1] for e in workload(500, 0.3, TOPICS, seed=1).encoded}
    second = {key(e)[1] for e in workload(500, 0.3, TOPICS, seed=2).encoded}
    assert not first & second


def test_no_seed_gives_a_fresh_workload_each_time() -> None:
    assert workload(50, 0.0, TOPICS, seed=None) != workload(50, 0.0, TOPICS, seed=None)


def test_every_generated_event_validates_against_the_schema(standard: Workload) -> None:
    schema: dict[str, Any] = orjson.loads(SCHEMA_FILE.read_bytes())
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    for event in set(standard.encoded):
        errors = [error.message for error in validator.iter_errors(orjson.loads(event))]
        assert errors == [], event


def test_a_bad_timestamp_would_fail_that_schema_check() -> None:
    # Guards the test above: without a date-time checker installed, format would be ignored.
    schema: dict[str, Any] = orjson.loads(SCHEMA_FILE.read_bytes())
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    event = orjson.loads(workload(1, 0.0, TOPICS, seed=1).encoded[0])
    assert not validator.is_valid({**event, "timestamp": "2026-13-45 25:00"})


def test_events_are_realistic_log_lines() -> None:
    event = orjson.loads(workload(1, 0.0, ["auth"], seed=3).encoded[0])
    assert event["topic"] == "auth"
    assert event["source"].startswith("svc-") and event["source"][-1].isdigit()
    assert event["timestamp"].endswith("Z")
    assert {"level", "message", "latency_ms", "user"} <= set(event["payload"])


def test_events_use_only_the_given_topics() -> None:
    topics = {key(e)[0] for e in workload(300, 0.2, ["alpha", "beta"], seed=5).encoded}
    assert topics == {"alpha", "beta"}


def test_no_duplicates_means_every_event_is_unique() -> None:
    sent = workload(1_000, 0.0, TOPICS, seed=9)
    assert (sent.unique_keys, sent.duplicates) == (1_000, 0)
    assert len(set(sent.encoded)) == 1_000


@pytest.mark.parametrize(
    ("events", "duplicates", "topics", "message"),
    [
        (0, 0.3, TOPICS, "events must be at least 1"),
        (10, -0.1, TOPICS, "duplicates must be a share"),
        (10, 1.0, TOPICS, "duplicates must be a share"),
        (10, 0.3, [], "at least one topic"),
        (10, 0.3, ["auth", ""], "topics must be 1 to 255 characters"),
        (1, 0.6, TOPICS, "leave no event to re-send"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(
        events: int, duplicates: float, topics: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        workload(events, duplicates, topics, seed=1)
