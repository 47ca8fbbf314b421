"""Every event rule of SPEC §2, through `shared.validation.problems`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rfc3339_validator import validate_rfc3339

from shared import validation
from shared.exceptions import ConfigurationError
from shared.paths import SCHEMA_FILE
from shared.validation import MAX_DEPTH, MAX_DETAILS, MAX_TEXT, _Shape, problems, report
from tests.helpers import event

STRING_FIELDS = ["topic", "event_id", "source"]
REQUIRED_FIELDS = ["topic", "event_id", "timestamp", "source", "payload"]


def without(field: str) -> dict[str, Any]:
    body = event()
    del body[field]
    return body


def paths(found: list[Any]) -> list[str]:
    return [problem["path"] for problem in found]


def test_a_valid_event_has_no_problem() -> None:
    assert problems([event()]) == []


def test_an_empty_list_of_events_has_no_problem() -> None:
    assert problems([]) == []


def test_a_problem_has_an_index_a_path_and_a_message() -> None:
    [problem] = problems([event(topic="")])
    assert set(problem) == {"index", "path", "message"}
    assert isinstance(problem["message"], str)
    assert problem["message"]


# topic, event_id, source: non-empty strings of at most 255 characters


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_a_string_field_of_one_character_is_accepted(field: str) -> None:
    assert problems([event(**{field: "a"})]) == []


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_a_string_field_of_255_characters_is_accepted(field: str) -> None:
    assert problems([event(**{field: "a" * 255})]) == []


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_a_string_field_of_256_characters_is_rejected(field: str) -> None:
    assert paths(problems([event(**{field: "a" * 256})])) == [f"/{field}"]


@pytest.mark.parametrize("character", ["é", "日", "😀"], ids=["latin", "cjk", "emoji"])
@pytest.mark.parametrize("field", STRING_FIELDS)
def test_255_non_ascii_characters_are_accepted_since_characters_not_bytes_are_counted(
    field: str, character: str
) -> None:
    assert len((character * 255).encode()) > 255
    assert problems([event(**{field: character * 255})]) == []


@pytest.mark.parametrize("character", ["é", "日", "😀"], ids=["latin", "cjk", "emoji"])
@pytest.mark.parametrize("field", STRING_FIELDS)
def test_256_non_ascii_characters_are_rejected(field: str, character: str) -> None:
    assert paths(problems([event(**{field: character * 256})])) == [f"/{field}"]


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_an_empty_string_field_is_rejected(field: str) -> None:
    assert paths(problems([event(**{field: ""})])) == [f"/{field}"]


@pytest.mark.parametrize("value", [7, 1.5, True, None, [], ["auth"], {}, {"a": "b"}],
                         ids=["int", "float", "bool", "null", "empty-array", "array",
                              "empty-object", "object"])
@pytest.mark.parametrize("field", STRING_FIELDS)
def test_a_string_field_that_is_not_a_string_is_rejected(field: str, value: Any) -> None:
    assert paths(problems([event(**{field: value})])) == [f"/{field}"]


# every field is required


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_a_missing_field_is_reported_at_its_own_path(field: str) -> None:
    assert paths(problems([without(field)])) == [f"/{field}"]


def test_an_empty_object_is_reported_once_for_each_missing_field() -> None:
    assert sorted(paths(problems([{}]))) == sorted(f"/{field}" for field in REQUIRED_FIELDS)


def test_a_missing_field_message_names_the_field() -> None:
    [problem] = problems([without("source")])
    assert "source" in problem["message"]


# timestamp: RFC 3339 date-time with an offset or Z


@pytest.mark.parametrize("timestamp", [
    "2026-11-25T10:00:00Z",
    "2026-11-25T10:00:00+07:00",
    "2026-11-25T10:00:00-05:30",
    "2026-11-25T10:00:00+00:00",
    "2026-11-25T10:00:00.5Z",
    "2026-11-25T10:00:00.123456+07:00",
    "2026-11-25t10:00:00z",
    "2024-02-29T23:59:59Z",
])
def test_an_rfc_3339_timestamp_is_accepted(timestamp: str) -> None:
    assert problems([event(timestamp=timestamp)]) == []


@pytest.mark.parametrize("timestamp", [
    "2026-11-25T10:00:00",
    "2026-11-25T10:00:00.123",
    "2026-11-25",
    "10:00:00Z",
    "2026-13-01T10:00:00Z",
    "2026-02-30T10:00:00Z",
    "2026-11-25T25:00:00Z",
    "2026-11-25 10:00:00",
    "2026-11-25T10:00:00+0700",
    "2026-11-25T10:00Z",
    "yesterday",
    "",
], ids=["no-offset", "fraction-no-offset", "date-only", "time-only", "month-13", "february-30",
        "hour-25", "space-no-offset", "offset-without-colon", "no-seconds", "yesterday", "empty"])
def test_a_timestamp_that_is_not_rfc_3339_is_rejected(timestamp: str) -> None:
    assert paths(problems([event(timestamp=timestamp)])) == ["/timestamp"]


# Timestamps shaped like RFC 3339 date-times, each part drawn from around its valid range:
# leap years (1900, 2000, 2024), day 0, days 29 to 31 of every month, year 0000, a trailing
# newline (which the pattern's `$` lets through), lowercase letters. In `_DATES` only the date
# varies, so that the day of the month decides often.
_YEARS = st.sampled_from(["0000", "0001", "1900", "2000", "2023", "2024", "2100", "9999", "20x4"])
_MONTHS = st.sampled_from(["00", "01", "02", "04", "06", "09", "11", "12", "13", "1"])
_DAYS = st.sampled_from(["00", "01", "09", "28", "29", "30", "31", "32", "3", "x1"])
_DATES = st.builds("{}-{}-{}T10:00:00Z".format, _YEARS, _MONTHS, _DAYS)
_NEAR_DATE_TIMES = st.builds(
    "{}-{}-{}{}{}:{}:{}{}{}{}".format, _YEARS, _MONTHS, _DAYS,
    st.sampled_from(["T", "t", " "]),
    st.sampled_from(["00", "23", "24", "9"]),
    st.sampled_from(["00", "59", "60"]),
    st.sampled_from(["00", "59", "60"]),
    st.sampled_from(["", ".5", ".123456789", "."]),
    st.sampled_from(["Z", "z", "+07:00", "-23:59", "+24:00", "+0700", ""]),
    st.sampled_from(["", "\n", " ", "x"]))


@given(st.one_of(_DATES, _NEAR_DATE_TIMES, st.text(max_size=40)))
@settings(max_examples=3000)
def test_the_fast_date_time_check_answers_as_rfc3339_validator(text: str) -> None:
    """The fast check's `format: date-time` (every event's timestamp) is
    `validation.is_date_time`, in place of rfc3339_validator's: the same answer for every
    string."""
    assert validation.is_date_time(text) is validate_rfc3339(text)


def test_the_timestamps_drawn_above_reach_both_answers() -> None:
    """Guards the test above: its strings are not all rejected by the pattern."""
    assert validation.is_date_time("2024-02-29T10:00:00Z")
    assert not validation.is_date_time("2023-02-29T10:00:00Z")
    assert not validation.is_date_time("0000-01-01T10:00:00Z")
    assert validation.is_date_time("2000-02-29T10:00:00Z\n")
    assert not validation.is_date_time("1900-02-29T10:00:00Z")


@pytest.mark.parametrize("timestamp", [1764064800, 1764064800.5, None, True, [], {}],
                         ids=["int", "float", "null", "bool", "array", "object"])
def test_a_timestamp_that_is_not_a_string_is_rejected(timestamp: Any) -> None:
    assert paths(problems([event(timestamp=timestamp)])) == ["/timestamp"]


# payload: a JSON object, may be empty


@pytest.mark.parametrize("payload", [
    {},
    {"level": "info"},
    {"user": {"id": 7, "roles": ["admin", {"scope": "all"}]}, "ok": True, "n": None},
], ids=["empty", "flat", "nested"])
def test_an_object_payload_is_accepted(payload: dict[str, Any]) -> None:
    assert problems([event(payload=payload)]) == []


def test_unknown_fields_inside_the_payload_are_allowed() -> None:
    assert problems([event(payload={"anything": 1, "topic": 2, "events": []})]) == []


@pytest.mark.parametrize("payload", [[], [{"a": 1}], "text", "", None, 3, 2.5, True],
                         ids=["empty-array", "array", "string", "empty-string", "null", "int",
                              "float", "bool"])
def test_a_payload_that_is_not_an_object_is_rejected(payload: Any) -> None:
    assert paths(problems([event(payload=payload)])) == ["/payload"]


# unknown top-level fields


@pytest.mark.parametrize("field", ["extra", "events", "Topic", "received_at", ""])
def test_an_unknown_top_level_field_is_rejected_at_its_path(field: str) -> None:
    assert paths(problems([event(**{field: "x"})])) == [f"/{field}"]


def test_each_unknown_field_is_its_own_problem() -> None:
    found = problems([event(one=1, two=2, three=3)])
    assert sorted(paths(found)) == ["/one", "/three", "/two"]
    assert {problem["index"] for problem in found} == {0}


def test_an_unknown_field_message_names_the_field() -> None:
    [problem] = problems([event(colour="red")])
    assert "colour" in problem["message"]


def test_unknown_and_known_problems_are_all_reported() -> None:
    found = problems([event(topic="", extra=1)])
    assert sorted(paths(found)) == ["/extra", "/topic"]


# the event itself must be an object


@pytest.mark.parametrize("value", [42, 1.5, True, None, "event", [], [event()]],
                         ids=["int", "float", "bool", "null", "string", "empty-list", "list"])
def test_an_event_that_is_not_an_object_yields_one_problem_at_the_empty_path(value: Any) -> None:
    [problem] = problems([value])
    assert (problem["index"], problem["path"]) == (0, "")


# indexes in a list of events


def test_problems_carry_the_index_of_their_event_and_valid_neighbours_have_none() -> None:
    events = [event("e-0"), event("e-1", topic=""), event("e-2"), 17, event("e-4", extra=1),
              event("e-5")]
    found = problems(events)
    assert [(problem["index"], problem["path"]) for problem in found] == [
        (1, "/topic"), (3, ""), (4, "/extra"),
    ]


def test_problems_are_listed_in_event_order() -> None:
    events = [without("payload"), event(), event(timestamp="nope"), event(source="")]
    assert [problem["index"] for problem in problems(events)] == [0, 2, 3]


def test_a_list_of_valid_events_has_no_problem() -> None:
    assert problems([event(f"e-{n}", topic=f"t-{n % 3}") for n in range(50)]) == []


# JSON pointers


@pytest.mark.parametrize(("field", "pointer"), [
    ("a/b", "/a~1b"),
    ("a~b", "/a~0b"),
    ("~/", "/~0~1"),
    ("~1", "/~01"),
    ("/", "/~1"),
])
def test_a_json_pointer_escapes_slash_and_tilde_in_field_names(field: str, pointer: str) -> None:
    assert paths(problems([event(**{field: 1})])) == [pointer]


# Limits beyond the schema: what the store could not hold or give back.


@pytest.mark.parametrize("field", ["topic", "event_id", "source"])
def test_a_nul_character_in_a_name_is_rejected(field: str) -> None:
    assert [(p["path"]) for p in problems([event(**{field: "a\x00b"})])] == [f"/{field}"]


@pytest.mark.parametrize(("payload", "path"), [
    ({"note": "a\x00b"}, "/payload/note"),
    ({"list": ["ok", "\x00"]}, "/payload/list/1"),
    ({"k\x00": 1}, "/payload"),
])
def test_a_nul_character_anywhere_in_the_payload_is_rejected_where_it_is(
        payload: dict[str, object], path: str) -> None:
    assert [p["path"] for p in problems([event(payload=payload)])] == [path]


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-01:00"])
def test_a_timestamp_outside_the_years_1_to_9999_in_utc_is_rejected(timestamp: str) -> None:
    [problem] = problems([event(timestamp=timestamp)])
    assert problem["path"] == "/timestamp"
    assert "1 to 9999" in problem["message"]


@pytest.mark.parametrize(("timestamp", "valid"), [
    ("2026-11-25T10:00:00+15:59", True), ("2026-11-25T10:00:00-15:59", True),
    ("2026-11-25T10:00:00+16:00", False), ("2026-11-25T10:00:00-23:59", False),
])
def test_the_utc_offset_must_be_one_postgresql_can_hold(timestamp: str, valid: bool) -> None:
    assert (problems([event(timestamp=timestamp)]) == []) is valid


def test_a_payload_nested_deeper_than_the_limit_is_rejected_and_one_at_it_is_not() -> None:
    def nested(levels: int) -> dict[str, object]:
        value: dict[str, object] = {}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    assert problems([event(payload=nested(MAX_DEPTH))]) == []
    [problem] = problems([event(payload=nested(MAX_DEPTH + 1))])
    assert "nested deeper" in problem["message"]


# The compiled fast check and jsonschema must give the same verdict on every input.

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3), max_leaves=6)
_timestamps = st.sampled_from([
    "2026-11-25T10:00:00Z", "2026-11-25T10:00:00.123+07:00", "2026-11-25t10:00:00z",
    "2026-11-25T10:00:00", "2026-11-25 10:00:00Z", "2026-11-25T23:59:60Z", "2026-02-30T00:00:00Z",
    "2026-11-25T10:00:00+24:00", "2026-11-25", "", "now"]) | st.text(max_size=25)
_fields = {"topic": st.text(max_size=300) | _values, "event_id": st.text(max_size=300) | _values,
           "source": st.text(max_size=300) | _values, "timestamp": _timestamps | _values,
           "payload": st.dictionaries(st.text(max_size=5), _values, max_size=3) | _values}


@st.composite
def _event_likes(draw: st.DrawFn) -> object:
    chosen = draw(st.lists(st.sampled_from(sorted(_fields)), unique=True))
    event = {name: draw(_fields[name]) for name in chosen}
    if draw(st.booleans()):
        event.update(draw(st.dictionaries(st.text(max_size=6), _values, max_size=2)))
    return event if draw(st.integers(0, 9)) else draw(_values)


@st.composite
def _near_valid(draw: st.DrawFn) -> object:
    """A valid event with one field drawn anew: the verdicts are most likely to differ here."""
    name = draw(st.sampled_from(sorted(_fields)))
    return event(**{name: draw(_fields[name])})


@settings(max_examples=400, deadline=None)
@given(_event_likes() | _near_valid())
def test_the_fast_check_and_jsonschema_agree_on_every_event(candidate: object) -> None:
    from shared.validation import _every_problem

    assert (problems([candidate]) == []) is (list(_every_problem([candidate])) == [])


@pytest.mark.parametrize("timestamp", ["1", "12345", "0", "2026-11-25T10:00:00+1"])
def test_short_or_odd_timestamps_are_reported_not_crashed_on(timestamp: str) -> None:
    [problem] = problems([event(timestamp=timestamp)])
    assert problem["path"] == "/timestamp"


# What a bad request costs is bounded whatever it holds: jsonschema sees each bad event's known
# fields only, standing in for themselves; problems past the listed ones are counted, not built.

WIDE = 250_000  # unknown fields of issue 11's event


class Spy:
    """Counts what validation asks of jsonschema, and the problems it builds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.instances: list[Any] = []
        self.built = 0
        real_validator, real_problem = validation._validator(), validation._problem
        spy = self

        class Validator:
            def iter_errors(self, instance: Any) -> Any:
                spy.instances.append(instance)
                return real_validator.iter_errors(instance)

        def problem(*args: Any) -> Any:
            spy.built += 1
            return real_problem(*args)

        monkeypatch.setattr(validation, "_validator", Validator)
        monkeypatch.setattr(validation, "_problem", problem)

    def widest(self) -> int:
        return max(len(instance) for instance in self.instances)


def test_a_report_lists_the_first_problems_and_counts_every_one_and_every_bad_event() -> None:
    events = [event("ok"), event("a", extra=1, topic=""), {}, event("b", timestamp="no")]
    found = report(events, limit=3)
    everything = problems(events)
    assert found.listed == everything[:3]
    assert (found.total, found.events) == (len(everything), 3)


def test_an_event_of_250_000_unknown_fields_costs_one_bounded_jsonschema_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    found = report([event("ok"), event("wide") | {f"f{i}": 0 for i in range(WIDE)}])
    assert (found.total, found.events) == (WIDE, 1)
    assert [p["path"] for p in found.listed] == [f"/f{i}" for i in range(MAX_DETAILS)]
    assert len(spy.instances) == 1  # the bad event, once; the valid one never reaches it
    assert spy.widest() <= len(REQUIRED_FIELDS)
    assert spy.built == MAX_DETAILS


def test_a_thousand_events_of_many_unknown_fields_cost_a_bounded_call_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    events = [event(str(n)) | {f"f{i}": 0 for i in range(400)} for n in range(1000)]
    found = report(events)
    assert (found.total, found.events, len(found.listed)) == (400_000, 1000, MAX_DETAILS)
    assert len(spy.instances) == 1000
    assert spy.widest() <= len(REQUIRED_FIELDS)
    assert spy.built == MAX_DETAILS


def nested_array(levels: int) -> Any:
    """An array `levels` deep, as a client can send it (JSON parsers stop at 1024 levels)."""
    return orjson.loads(b"[" * levels + b"]" * levels)


@pytest.mark.parametrize("candidate", [
    event(topic=[0] * 500_000), event(event_id="x" * 1_000_000),
    event(timestamp="9" * 1_000_000), event(source={f"k{i}": i for i in range(100_000)}),
    event(payload="z" * 1_000_000), event(**{"x" * 1_000_000: 1}),
    event(payload={"k" * 1_000_000: {"v" * 1_000_000: "\x00"}}),
    nested_array(1019), event(topic=nested_array(1018)), "s" * 1_000_000,
], ids=["topic-array", "long-event-id", "long-timestamp", "source-object", "payload-string",
        "long-unknown-name", "long-payload-keys", "deep-array-event", "deep-array-topic",
        "string-event"])
def test_a_problem_stays_short_whatever_the_value_it_is_about(candidate: Any) -> None:
    found = problems([candidate])
    assert found
    assert all(len(p["path"]) <= MAX_TEXT and len(p["message"]) <= MAX_TEXT for p in found)


def test_jsonschema_gets_containers_empty_and_long_strings_quoted_short(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    [problem] = problems([event(topic=list(range(1000)))])
    [view] = spy.instances
    assert view["topic"] == []
    assert problem["message"] == "[0, 1, 2, 3, 4, 5, ...] is not of type 'string'"
    [problem] = problems([event(event_id="x" * 1000)])
    assert problem["message"].endswith("' is too long")
    assert len(problem["message"]) < 100


def test_a_path_too_long_points_at_the_deepest_value_that_fits() -> None:
    [problem] = problems([event(payload={"ok": {"k" * 1000: "\x00"}})])
    assert problem["path"] == "/payload/ok"
    [problem] = problems([event(**{"u" * 1000: 1})])
    assert problem["path"] == ""
    assert problem["message"].startswith("unknown field 'uuuu")


@pytest.mark.parametrize("change", [
    {"properties": {"payload": {"type": "object", "properties": {"a": {"type": "string"}}}}},
    {"properties": {"topic": {"enum": ["a", "b"]}}},
    {"additionalProperties": True},
    {"patternProperties": {"^x-": {}}},
    {"type": "array"},
], ids=["payload-described", "enum", "additional-allowed", "pattern-properties", "array"])
def test_a_schema_whose_checks_reach_past_a_fields_value_is_refused(
        change: dict[str, Any]) -> None:
    schema = orjson.loads(SCHEMA_FILE.read_bytes()) | change
    with pytest.raises(ConfigurationError, match="bound its cost"):
        _Shape.of(schema)


def test_the_shipped_schema_names_the_fields_validation_knows() -> None:
    assert _Shape.of(orjson.loads(SCHEMA_FILE.read_bytes())).properties == set(REQUIRED_FIELDS)


@settings(max_examples=200, deadline=None)
@given(st.lists(_event_likes() | _near_valid(), max_size=6), st.integers(0, 4))
def test_a_report_is_the_first_problems_of_the_full_list_and_counts_them_all(
        candidates: list[object], limit: int) -> None:
    everything = problems(candidates)
    found = report(candidates, limit=limit)
    assert found.listed == everything[:limit]
    assert found.total == len(everything)
    assert found.events == len({p["index"] for p in everything})
