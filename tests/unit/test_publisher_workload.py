"""The simulator's workload: exact counts, byte-identical late re-sends, valid events, made as
a stream in flat memory."""

from __future__ import annotations

import argparse
import hashlib
import tracemalloc
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from services.publisher import __main__ as publisher
from services.publisher.sender import batches
from services.publisher.simulator import WINDOW, Workload, workload
from shared.settings import Settings

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema" / "event.schema.json"
TOPICS = ["auth", "billing", "orders", "search", "payments"]


def key(event: bytes) -> tuple[str, str]:
    parsed = orjson.loads(event)
    return parsed["topic"], parsed["event_id"]


@pytest.fixture(scope="module")
def standard() -> Workload:
    return workload(20_000, 0.3, TOPICS, seed=7)


@pytest.fixture(scope="module")
def sent(standard: Workload) -> list[bytes]:
    return list(standard.encoded())


def originals(events: list[bytes]) -> list[bytes]:
    """The first copy of each event, in the order they went out."""
    seen: set[bytes] = set()
    firsts = []
    for event in events:
        if event not in seen:
            seen.add(event)
            firsts.append(event)
    return firsts


def test_a_thirty_percent_workload_has_exact_unique_and_duplicate_counts(
        standard: Workload, sent: list[bytes]) -> None:
    assert (standard.events, standard.unique_keys, standard.duplicates) == (20_000, 14_000, 6_000)
    assert len(sent) == 20_000
    assert len({key(event) for event in sent}) == 14_000


@pytest.mark.parametrize(("events", "duplicates"),
                         [(1, 0.0), (2, 0.5), (7, 0.3), (1_001, 0.9), (3_333, 0.01)])
def test_the_counts_are_exact_for_any_size_and_share(events: int, duplicates: float) -> None:
    work = workload(events, duplicates, TOPICS, seed=events)
    stream = list(work.encoded())
    assert len(stream) == events
    assert work.unique_keys == round(events * (1 - duplicates)) == len(set(stream))
    assert work.duplicates == events - work.unique_keys


def test_every_duplicate_is_byte_identical_to_an_earlier_event(sent: list[bytes]) -> None:
    first_copy: dict[tuple[str, str], bytes] = {}
    resends = 0
    for event in sent:
        if key(event) in first_copy:
            resends += 1
            assert event == first_copy[key(event)]
        else:
            first_copy[key(event)] = event
    assert resends == 6_000


def test_duplicates_always_come_after_their_original(sent: list[bytes]) -> None:
    # The simulator stamps its unique events with rising timestamps, in the order it makes them.
    # If a re-send ever overtook its original, the first copies would go out of that order.
    first_copies: dict[tuple[str, str], str] = {}
    for event in sent:
        first_copies.setdefault(key(event), orjson.loads(event)["timestamp"])
    stamps = list(first_copies.values())
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)


def test_duplicates_are_spread_through_the_run_not_bunched_at_the_end(
        sent: list[bytes]) -> None:
    seen: set[bytes] = set()
    resend_positions = []
    for index, event in enumerate(sent):
        if event in seen:
            resend_positions.append(index)
        seen.add(event)
    assert resend_positions[0] < 2_000
    # Evenly: each fifth of the run carries between a sixth and a quarter of the re-sends.
    fifths = [sum(1 for i in resend_positions if n * 4_000 <= i < (n + 1) * 4_000)
              for n in range(5)]
    assert all(1_000 < count < 1_500 for count in fifths), fifths


def test_a_resend_copies_one_of_the_last_window_originals() -> None:
    events = list(workload(3 * WINDOW, 0.5, TOPICS, seed=4).encoded())
    made: dict[bytes, int] = {}
    for event in events:
        if event in made:
            assert len(made) - made[event] <= WINDOW
        else:
            made[event] = len(made)


def test_the_same_seed_gives_the_same_bytes() -> None:
    first, second = workload(500, 0.3, TOPICS, seed=42), workload(500, 0.3, TOPICS, seed=42)
    assert list(first.encoded()) == list(second.encoded())


def test_reading_a_workload_again_gives_the_same_bytes_even_without_a_seed() -> None:
    work = workload(500, 0.3, TOPICS, seed=None)
    assert list(work.encoded()) == list(work.encoded())


def test_a_sample_is_the_first_events_of_the_run() -> None:
    work = workload(1_000, 0.3, TOPICS, seed=8)
    assert work.sample(100) == list(work.encoded())[:100]
    assert work.sample(5_000) == list(work.encoded())


def test_a_different_seed_gives_different_event_ids() -> None:
    first = {key(e)[1] for e in workload(500, 0.3, TOPICS, seed=1).encoded()}
    second = {key(e)[1] for e in workload(500, 0.3, TOPICS, seed=2).encoded()}
    assert not first & second


def test_no_seed_gives_a_fresh_workload_each_time() -> None:
    assert (list(workload(50, 0.0, TOPICS, seed=None).encoded())
            != list(workload(50, 0.0, TOPICS, seed=None).encoded()))


def test_event_ids_are_uuidv7_carrying_the_events_own_millisecond(sent: list[bytes]) -> None:
    firsts = [orjson.loads(event) for event in originals(sent)]
    for event in firsts:
        event_id = uuid.UUID(event["event_id"])
        assert (event_id.version, event_id.variant) == (7, uuid.RFC_4122)
        stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        assert event_id.int >> 80 == int(stamp.timestamp() * 1000)
    ids = [event["event_id"] for event in firsts]
    assert ids == sorted(ids)  # time-ordered: made in that order, they sort in that order
    assert len(set(ids)) == len(ids)


def test_the_generators_peak_memory_stays_flat_in_the_number_of_events() -> None:
    """10 times the events, and the stream cut into request bodies as the sender does: the peak
    of what is allocated stays within 1.5 times (a workload held in a list would be 10 times)."""
    def peak(events: int) -> int:
        tracemalloc.start()
        try:
            work = workload(events, 0.3, TOPICS, seed=5)
            sent = sum(count for _, count in batches(work.encoded(), 100))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert sent == events

    small, large = peak(20_000), peak(200_000)
    assert large <= 1.5 * small, f"peak {large} bytes at 200k events, {small} at 20k"


def test_every_generated_event_validates_against_the_schema(sent: list[bytes]) -> None:
    schema: dict[str, Any] = orjson.loads(SCHEMA_FILE.read_bytes())
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    for event in set(sent):
        errors = [error.message for error in validator.iter_errors(orjson.loads(event))]
        assert errors == [], event


def test_a_bad_timestamp_would_fail_that_schema_check() -> None:
    # Guards the test above: without a date-time checker installed, format would be ignored.
    schema: dict[str, Any] = orjson.loads(SCHEMA_FILE.read_bytes())
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    event = orjson.loads(workload(1, 0.0, TOPICS, seed=1).sample(1)[0])
    assert not validator.is_valid({**event, "timestamp": "2026-13-45 25:00"})


def test_events_are_realistic_log_lines() -> None:
    event = orjson.loads(workload(1, 0.0, ["auth"], seed=3).sample(1)[0])
    assert event["topic"] == "auth"
    assert event["source"].startswith("svc-") and event["source"][-1].isdigit()
    assert event["timestamp"].endswith("Z")
    assert {"level", "message", "latency_ms", "user"} <= set(event["payload"])


def test_events_use_only_the_given_topics() -> None:
    topics = {key(e)[0] for e in workload(300, 0.2, ["alpha", "beta"], seed=5).encoded()}
    assert topics == {"alpha", "beta"}


def test_no_duplicates_means_every_event_is_unique() -> None:
    sent = workload(1_000, 0.0, TOPICS, seed=9)
    assert (sent.unique_keys, sent.duplicates) == (1_000, 0)
    assert len(set(sent.encoded())) == 1_000


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


def dry_run(capsys: pytest.CaptureFixture[str], *arguments: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    publisher.add_arguments(parser)
    args = parser.parse_args(["--dry-run", "--json", *arguments])
    assert publisher.run(Settings.from_env({}), args) == 0
    figures: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return figures


def test_a_dry_run_names_the_bytes_a_seed_sends_by_their_digest(
        capsys: pytest.CaptureFixture[str]) -> None:
    first = dry_run(capsys, "--events", "3000", "--seed", "11", "--batch", "64")
    assert dry_run(capsys, "--events", "3000", "--seed", "11", "--batch", "64") == first
    bodies = list(batches(workload(3_000, 0.3, TOPICS, seed=11).encoded(), 64))
    assert (first["events"], first["unique_keys"], first["duplicates"]) == (3_000, 2_100, 900)
    assert (first["requests"], first["bytes"]) == (len(bodies), sum(len(b) for b, _ in bodies))
    assert first["sha256"] == hashlib.sha256(b"".join(b for b, _ in bodies)).hexdigest()
    other = dry_run(capsys, "--events", "3000", "--seed", "12", "--batch", "64")
    assert other["sha256"] != first["sha256"]
