"""The shapes a publish body may take (SPEC §3), through `services.ingest.bodies.events_of`."""

from __future__ import annotations

from typing import Any

import pytest

from services.ingest.bodies import BodyShapeError, events_of
from tests.helpers import event


def test_one_event_object_is_a_list_of_that_event() -> None:
    assert events_of(event()) == [event()]


def test_an_array_of_events_is_returned_in_order() -> None:
    events = [event(f"e-{n}") for n in range(5)]
    assert events_of(list(events)) == events


def test_an_array_of_one_event_is_returned_as_is() -> None:
    assert events_of([event()]) == [event()]


def test_an_envelope_returns_its_events_in_order() -> None:
    events = [event(f"e-{n}", topic=f"t-{n}") for n in range(5)]
    assert events_of({"events": list(events)}) == events


def test_an_envelope_of_one_event_is_a_list_of_that_event() -> None:
    assert events_of({"events": [event()]}) == [event()]


@pytest.mark.parametrize("body", [
    {},
    {"topic": "auth"},
    {"foo": 1, "bar": [1, 2]},
    {"Events": []},
    event(extra="x"),
], ids=["empty-object", "partial-event", "arbitrary-object", "capitalised-events", "extra-field"])
def test_an_object_without_an_events_key_is_one_event_whatever_it_holds(
    body: dict[str, Any],
) -> None:
    assert events_of(body) == [body]


def test_the_items_of_an_array_are_not_checked_here() -> None:
    items: list[Any] = [1, "x", None, [], {}]
    assert events_of(items) == items


def test_the_items_of_an_envelope_are_not_checked_here() -> None:
    items: list[Any] = [1, "x", None]
    assert events_of({"events": items}) == items


def test_an_empty_array_is_rejected() -> None:
    with pytest.raises(BodyShapeError):
        events_of([])


def test_an_empty_envelope_is_rejected() -> None:
    with pytest.raises(BodyShapeError):
        events_of({"events": []})


@pytest.mark.parametrize("extra", [{"meta": 1}, {"topic": "auth"}, {"events2": []}])
def test_an_envelope_with_extra_keys_is_rejected(extra: dict[str, Any]) -> None:
    with pytest.raises(BodyShapeError):
        events_of({"events": [event()], **extra})


def test_an_envelope_with_extra_keys_names_them() -> None:
    with pytest.raises(BodyShapeError, match="meta"):
        events_of({"events": [event()], "meta": 1})


@pytest.mark.parametrize("events", [event(), "events", 3, None, True, {"events": [event()]}],
                         ids=["object", "string", "number", "null", "bool", "nested-envelope"])
def test_an_envelope_whose_events_is_not_a_list_is_rejected(events: Any) -> None:
    with pytest.raises(BodyShapeError):
        events_of({"events": events})


@pytest.mark.parametrize("body", ["", "event", '{"topic": "auth"}', 0, 42, -1.5, None, True,
                                  False],
                         ids=["empty-string", "string", "json-text", "zero", "int", "float",
                              "null", "true", "false"])
def test_a_body_that_is_neither_an_object_nor_an_array_is_rejected(body: Any) -> None:
    with pytest.raises(BodyShapeError):
        events_of(body)


def test_a_body_shape_error_is_a_value_error() -> None:
    assert issubclass(BodyShapeError, ValueError)
