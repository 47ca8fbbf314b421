"""Opaque page cursors (`shared.cursor`) and the stream id they carry (`shared.entries`)."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import pytest

from shared import cursor
from shared.entries import StreamId
from shared.exceptions import InvalidCursor

POSITIONS = [
    StreamId(0, 0),
    StreamId(0, 1),
    StreamId(1700000000000, 5),
    StreamId(1764064800123, 99999),
    StreamId(2**62, 0),
    StreamId(2**62, 2**62),
    StreamId(2**63 - 1, 2**63 - 1),
]


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("position", POSITIONS, ids=str)
def test_a_decoded_cursor_is_the_position_it_was_encoded_from(position: StreamId) -> None:
    assert cursor.decode(cursor.encode(position)) == position


@pytest.mark.parametrize("position", POSITIONS, ids=str)
def test_a_cursor_does_not_show_the_raw_stream_id(position: StreamId) -> None:
    encoded = cursor.encode(position)
    assert str(position) not in encoded
    if len(str(position.ms)) >= 4:  # a digit or two may appear in base64 by chance
        assert str(position.ms) not in encoded


@pytest.mark.parametrize("position", POSITIONS, ids=str)
def test_a_cursor_is_url_safe_text(position: StreamId) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor.encode(position))


def test_different_positions_have_different_cursors() -> None:
    assert len({cursor.encode(position) for position in POSITIONS}) == len(POSITIONS)


@pytest.mark.parametrize("garbage", [
    "",
    "garbage",
    "not a cursor",
    "!!!!",
    "%%%%====",
    "é",
    "1700000000000-5",
    b64("1700000000000-5"),
    b64("v2:1700000000000-5"),
    b64("V1:1700000000000-5"),
    b64("v1:"),
    b64("v1:1700000000000"),
    b64("v1:1700000000000-"),
    b64("v1:-5"),
    b64("v1:-1-5"),
    b64("v1:1--5"),
    b64("v1:1700000000000-5-6"),
    b64("v1:abc-def"),
    b64("v1:1.5-2"),
    b64("v1: 1-2"),
    b64("v1:+1-2"),
    b64("v1:1_0-2"),
    b64(f"v1:{2**63}-0"),
    b64(f"v1:0-{2**63}"),
    base64.urlsafe_b64encode(b"v1:\xff\xfe-1").decode(),
    b64("v1:1-1") + "!",
    b64("v1:1-1")[:3] + "." + b64("v1:1-1")[3:],
    b64("v1:1-1") + "\n",
], ids=["empty", "word", "spaces", "bangs", "not-base64", "non-ascii", "raw-id",
        "no-version", "other-version", "capital-version", "version-only", "missing-seq",
        "empty-seq", "missing-ms", "negative-ms", "negative-seq", "three-parts", "letters",
        "fraction", "leading-space", "plus-sign", "underscore", "ms-over-bigint",
        "seq-over-bigint", "binary", "junk-after", "junk-inside", "newline-after"])
def test_a_cursor_that_this_server_did_not_hand_out_is_invalid(garbage: str) -> None:
    with pytest.raises(InvalidCursor):
        cursor.decode(garbage)


def test_a_cursor_whose_padding_was_kept_still_decodes() -> None:
    position = StreamId(1700000000000, 5)
    padded = base64.urlsafe_b64encode(f"v1:{position}".encode()).decode()
    assert cursor.decode(padded) == position


# StreamId


def test_a_stream_id_parses_from_the_bytes_redis_returns() -> None:
    assert StreamId.parse(b"1700000000000-5") == StreamId(1700000000000, 5)


def test_a_stream_id_parses_from_text() -> None:
    assert StreamId.parse("1700000000000-5") == StreamId(1700000000000, 5)


@pytest.mark.parametrize("position", POSITIONS, ids=str)
def test_a_stream_id_prints_as_redis_writes_it_and_parses_back(position: StreamId) -> None:
    assert str(position) == f"{position.ms}-{position.seq}"
    assert StreamId.parse(str(position)) == position


def test_a_stream_id_was_received_at_the_utc_time_of_its_milliseconds() -> None:
    received = StreamId.parse(b"1700000000000-5").received_at
    assert received == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert received.tzinfo is UTC


def test_a_stream_id_keeps_its_milliseconds_in_received_at() -> None:
    received = StreamId.parse(b"1700000000123-0").received_at
    assert received == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


def test_the_sequence_number_does_not_change_received_at() -> None:
    assert StreamId(1700000000000, 0).received_at == StreamId(1700000000000, 9).received_at
