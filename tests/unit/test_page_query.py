"""The query of `GET /events` (`services.ingest.handlers._page_query`): `topic`, `limit` (1 to
1000, default 100) and `after`, each at most once; anything else is a 400 `invalid_parameter`
naming the parameter (SPEC §3, README "The API")."""

from __future__ import annotations

import base64

import pytest
from multidict import MultiDict

from services.ingest.errors import ApiError
from services.ingest.handlers import _page_query
from shared import cursor
from shared.entries import StreamId


def query(*pairs: tuple[str, str]) -> MultiDict[str]:
    return MultiDict(pairs)


def refused(q: MultiDict[str]) -> ApiError:
    with pytest.raises(ApiError) as raised:
        _page_query(q)
    error = raised.value
    assert (error.status, error.error, error.headers) == (400, "invalid_parameter", {})
    [detail] = error.details
    assert set(detail) == {"parameter", "message"}
    assert detail["message"] and detail["message"] in error.message
    return error


def refused_parameter(*pairs: tuple[str, str]) -> str:
    parameter: str = refused(query(*pairs)).details[0]["parameter"]
    return parameter


def short(value: str) -> str:
    """A test id for a value that may be thousands of characters long."""
    return value if len(value) <= 12 else f"{value[:3]}...{len(value)}chars"


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_no_parameter_lists_every_topic_from_the_start_100_at_a_time() -> None:
    assert _page_query(query()) == (None, None, 100)


def test_every_parameter_is_read() -> None:
    after = cursor.encode(StreamId(1700000000000, 7))
    assert _page_query(query(("after", after), ("topic", "auth"), ("limit", "25"))) == (
        "auth", StreamId(1700000000000, 7), 25)


@pytest.mark.parametrize("name", ["sort", "Topic", "LIMIT", "topic[]", "after ", "", "cursor",
                                  "topic\x00"])
def test_an_unknown_parameter_is_refused_by_name(name: str) -> None:
    assert refused_parameter(("topic", "auth"), (name, "x")) == name


def test_of_several_unknown_parameters_the_first_by_name_is_named() -> None:
    assert refused_parameter(("zeta", "1"), ("alpha", "2")) == "alpha"


@pytest.mark.parametrize("name", ["topic", "limit", "after"])
def test_a_repeated_parameter_is_refused_even_with_the_same_value_twice(name: str) -> None:
    value = {"topic": "auth", "limit": "10", "after": cursor.encode(StreamId(1, 1))}[name]
    assert refused_parameter((name, value), (name, value)) == name


@pytest.mark.parametrize(("raw", "limit"), [
    ("1", 1), ("2", 2), ("100", 100), ("999", 999), ("1000", 1000), ("01", 1), ("0100", 100)])
def test_a_limit_from_1_to_1000_is_read_as_a_number(raw: str, limit: int) -> None:
    assert _page_query(query(("limit", raw))) == (None, None, limit)


@pytest.mark.parametrize("raw", [
    "0", "00", "1001", "999999", "1000000", "-1", "-0", "+5", " 5", "5 ", "5\n", "", "1e3",
    "0x10", "1_000", "10.0", "ten",
    "²", "¹⁰", "٣", "\U0001d7d3", "Ⅻ", "⑩", "\uff15",  # digits to str.isdigit, not ASCII
    "9" * 30, "1" * 5000, "1" * 10**5,  # long digit strings: int() refuses over 4300 digits
], ids=short)
def test_any_other_limit_is_refused(raw: str) -> None:
    assert refused_parameter(("limit", raw)) == "limit"


@pytest.mark.parametrize("topic", ["a", "x" * 255, "é" * 255, "\U0001f600" * 255, " ", "%",
                                   "a\x01b", "ünïcødé"], ids=short)
def test_a_topic_of_1_to_255_characters_without_nul_is_taken_as_is(topic: str) -> None:
    assert _page_query(query(("topic", topic))) == (topic, None, 100)


@pytest.mark.parametrize("topic", ["", "x" * 256, "é" * 256, "x" * 10_000], ids=short)
def test_a_topic_of_no_character_or_over_255_is_refused(topic: str) -> None:
    assert refused_parameter(("topic", topic)) == "topic"


@pytest.mark.parametrize("topic", ["\x00", "a\x00b", "auth\x00"])
def test_a_topic_with_a_nul_character_is_refused(topic: str) -> None:
    assert refused_parameter(("topic", topic)) == "topic"


@pytest.mark.parametrize("position", [StreamId(0, 0), StreamId(1700000000000, 5),
                                      StreamId(2**63 - 1, 2**63 - 1)], ids=str)
def test_a_cursor_this_server_handed_out_is_decoded(position: StreamId) -> None:
    assert _page_query(query(("after", cursor.encode(position)))) == (None, position, 100)


@pytest.mark.parametrize("after", [
    "", "not-a-cursor", "=", "v1:1-1", b64("v2:1-1"), b64("v1:"), b64("v1:1"),
    b64("v1:-1-1"), b64("v1:1-1 "), b64("v1:1-x"), b64(f"v1:{2**63}-0"), b64(f"v1:0-{2**63}"),
    b64("1-1"), "é",
])
def test_a_cursor_this_server_did_not_hand_out_is_refused(after: str) -> None:
    assert refused_parameter(("after", after)) == "after"
