"""Event validation against `schema/event.schema.json`, compiled once per process.

The schema file is the single source of truth for what an event is. It is compiled twice: to
Python code by fastjsonschema, which answers "valid?" about ten times faster and is all a good
request needs; and by jsonschema, which names every problem, for the events that have one.
This module turns the verdicts into the error details of SPEC §3: `{"index", "path",
"message"}` for each problem.
A few limits no JSON Schema can say come on top, each because an event past it could be
accepted but never stored or read back: no NUL character (PostgreSQL's text and jsonb cannot
hold it), a timestamp whose offset PostgreSQL can represent and whose UTC time falls in years
1 to 9999, and a payload nested at most MAX_DEPTH levels.

What a bad event costs is bounded, whatever it holds. jsonschema builds an error, with its
message, for every problem: 250,000 unknown fields were 250,000 errors and a second of the
event loop. So unknown top-level fields are found here, against the schema's `properties`, and
counted rather than built past the first MAX_DETAILS; jsonschema sees only the known fields,
at most as many as the schema names, each value standing in with a short `repr` (a message
quotes the value it is about, and a megabyte value made a megabyte message, a deeply nested one
a RecursionError). That holds only for a schema whose checks stop at each field's own value:
`_Shape` checks so when the schema is loaded, and refuses any other.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import chain, islice
from pathlib import Path
from typing import Any, TypedDict

import fastjsonschema
import orjson
from fastjsonschema import JsonSchemaValueException
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from rfc3339_validator import RFC3339_REGEX

from shared.exceptions import ConfigurationError
from shared.paths import SCHEMA_FILE


class Problem(TypedDict):
    index: int
    path: str
    message: str


@dataclass(frozen=True, slots=True)
class Report:
    """The problems of a request's events: the first ones, and how many there are in all."""

    listed: list[Problem]
    total: int  # problems, listed or not
    events: int  # events with at least one problem


# Keywords of the schema whose checks stop at the event's own fields (the top level), and of
# each field's schema whose checks stop at the field's own value (and for containers look only
# at the type): with those alone, unknown fields can be told from the `properties` and a
# field's value can stand in for itself in jsonschema as an empty container of its type.
TOP_KEYWORDS = {"$schema", "$id", "$comment", "title", "description", "type", "properties",
                "required", "additionalProperties"}
FIELD_KEYWORDS = {"$comment", "title", "description", "type", "minLength", "maxLength",
                  "format", "pattern"}


@dataclass(frozen=True, slots=True)
class _Shape:
    """What validation reads of the schema's top level: the fields an event may have."""

    properties: frozenset[str]

    @classmethod
    def of(cls, schema: dict[str, Any]) -> _Shape:
        fields = schema.get("properties", {})
        odd = sorted(set(schema) - TOP_KEYWORDS) + sorted(
            f"{name}.{keyword}" for name, field in fields.items()
            for keyword in set(field) - FIELD_KEYWORDS)
        if odd or schema.get("type") != "object" or schema.get("additionalProperties") is not False:
            raise ConfigurationError(
                f"the event schema must be an object of known fields (additionalProperties: "
                f"false) whose checks stop at each field's value, for validation to bound its "
                f"cost (shared/validation.py); it has {odd or 'another top level'}")
        return cls(frozenset(fields))


def _schema(schema_file: Path) -> dict[str, Any]:
    schema: dict[str, Any] = orjson.loads(schema_file.read_bytes())
    return schema


@cache
def _fast_check(schema_file: Path = SCHEMA_FILE) -> Callable[[Any], Any]:
    """Raises on the first problem; the same formats as `_validator` (RFC 3339 date-times)."""
    check: Callable[[Any], Any] = fastjsonschema.compile(
        _schema(schema_file), formats={"date-time": is_date_time})
    return check


_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February of a leap year


def is_date_time(text: str) -> bool:
    """`rfc3339_validator.validate_rfc3339`, answer for answer (tests/unit/test_validation.py
    checks it with Hypothesis), at a third of the cost: its own pattern, then the day of the
    month without `calendar.monthrange`, which works out the weekday of the month's first day.
    Every event's timestamp goes through it."""
    match = RFC3339_REGEX.match(text)
    if match is None:
        return False
    year, month, day = match.groups()
    if year == "0000":  # no year 0
        return False
    number = int(day)
    if 1 <= number <= 28:
        return True
    month_days = _MONTH_DAYS[int(month)]
    if number == 29 and month_days == 29:
        return _leap(int(year))
    return 1 <= number <= month_days


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@cache
def _validator(schema_file: Path = SCHEMA_FILE) -> Draft202012Validator:
    schema = _schema(schema_file)
    Draft202012Validator.check_schema(schema)
    # Without a FormatChecker, `format: date-time` is only an annotation and bad timestamps pass.
    return Draft202012Validator(schema, format_checker=FormatChecker(["date-time"]))


@cache
def _shape(schema_file: Path = SCHEMA_FILE) -> _Shape:
    return _Shape.of(_schema(schema_file))


MAX_DEPTH = 100  # levels of nesting in a payload
# Problems a 422 lists: the first ones, in event order, and how many there are in all. A client
# fixes those and sends again; the answer stays small whatever it sent.
MAX_DETAILS = 100
# Characters of a problem's path or message at most: a path longer than that points at the
# deepest enclosing value that fits; a message is cut, with "…". Values are quoted shortened.
MAX_TEXT = 300
MAX_OFFSET = timedelta(hours=15, minutes=59, seconds=59)  # PostgreSQL's limit on a UTC offset
NUL = "\x00"


def problems(events: list[Any]) -> list[Problem]:
    """Every problem of every event, in event order; empty when all of them are valid."""
    return list(iter_problems(events))


def iter_problems(events: list[Any]) -> Iterator[Problem]:
    """The problems of `problems`, one at a time."""
    for index, event in enumerate(events):
        yield from _event_problems(index, event)[1]


def report(events: list[Any], limit: int = MAX_DETAILS) -> Report:
    """The first `limit` problems of the events, in event order, and how many there are: those
    past the first `limit` are counted, not built (an event of 250,000 unknown fields is
    250,000 problems)."""
    listed: list[Problem] = []
    total = bad = 0
    for index, event in enumerate(events):
        count, found = _event_problems(index, event)
        if count:
            total += count
            bad += 1
            listed.extend(islice(found, limit - len(listed)))
    return Report(listed, total, bad)


def _event_problems(index: int, event: Any) -> tuple[int, Iterator[Problem]]:
    """How many problems the event has, and the problems, built as they are taken."""
    if isinstance(event, dict) and len(event) > len(_shape().properties):
        # Unknown fields, surely: spare the fast check, whose message sorts them all.
        return _detailed(index, event)
    try:
        _fast_check()(event)
    except JsonSchemaValueException:
        return _detailed(index, event)
    found = _storable(event)  # the fast check passed: it is an object
    return len(found), (_problem(index, parts, why) for parts, why in found)


def _every_problem(events: list[Any]) -> Iterator[Problem]:
    """Every problem as jsonschema names it, for every event, the fast check left out."""
    for index, event in enumerate(events):
        yield from _detailed(index, event)[1]


def _detailed(index: int, event: Any) -> tuple[int, Iterator[Problem]]:
    """jsonschema's verdict on an event, at a cost its size does not drive: it sees the known
    fields only (the unknown ones are counted here), each value standing in for itself."""
    validator = _validator()
    if not isinstance(event, dict):
        named = [p for e in validator.iter_errors(_stand_in(event)) for p in _problems(index, e)]
        return len(named), iter(named)
    known = _shape().properties
    view = {name: _stand_in(event[name]) for name in known if name in event}
    errors = sorted(validator.iter_errors(view), key=lambda e: list(e.absolute_path))
    # In the order jsonschema gave them: the event's own (missing fields), then its unknown
    # fields (`additionalProperties` sorts there), then each field's, by name.
    own = [p for e in errors if not e.absolute_path for p in _problems(index, e)]
    fields = [p for e in errors if e.absolute_path for p in _problems(index, e)]
    stored = [_problem(index, parts, why) for parts, why in _storable(event)]
    unknown = (_problem(index, [name], f"unknown field {_quote(name)} is not allowed")
               for name in event if name not in known)
    count = len(own) + len(event) - len(view) + len(fields) + len(stored)
    return count, chain(own, unknown, fields, stored)


class _Quote(reprlib.Repr):
    """A `repr` of bounded size and depth, objects' members in their order (reprlib sorts
    them, which costs a sort of every key of a large object)."""

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [f"{self.repr1(key, level - 1)}: {self.repr1(value, level - 1)}"
                  for key, value in islice(x.items(), self.maxdict)]
        return "{" + ", ".join(pieces) + (", ...}" if len(x) > self.maxdict else "}")


_quoter = _Quote()
_quoter.maxstring = 80
_quoter.maxlevel = 3


def _quote(value: Any) -> str:
    return _quoter.repr(value)


class _String(str):
    __slots__ = ()

    def __repr__(self) -> str:
        return _quote(str(self))


class _Object(dict[str, Any]):
    """An empty object standing in for a field's object value, quoting it."""

    def __init__(self, value: dict[str, Any]) -> None:
        super().__init__()
        self.quoted = _quote(value)

    def __repr__(self) -> str:
        return self.quoted


class _Array(list[Any]):
    """An empty array standing in for a field's array value, quoting it."""

    def __init__(self, value: list[Any]) -> None:
        super().__init__()
        self.quoted = _quote(value)

    def __repr__(self) -> str:
        return self.quoted


def _stand_in(value: Any) -> Any:
    """The value as jsonschema gets it: of the same type, the same string, and quoted short.
    A container comes empty: the schema's checks of a field look at its type only (`_Shape`)."""
    if isinstance(value, str):
        return value if len(value) <= _quoter.maxstring else _String(value)
    if isinstance(value, dict):
        return _Object(value)
    if isinstance(value, list):
        return _Array(value)
    return value


def _storable(event: dict[str, Any]) -> list[tuple[list[str], str]]:
    """(path, why) for what the store could not hold, in fields the schema found well typed."""
    found = [([name], "must not contain the NUL character (U+0000)")
             for name in ("topic", "event_id", "source")
             if isinstance(event.get(name), str) and NUL in event[name]]
    timestamp = event.get("timestamp")
    if isinstance(timestamp, str):
        found.extend((["timestamp"], why) for why in _timestamp(timestamp))
    payload = event.get("payload")
    if isinstance(payload, dict) and not _clean(payload, 1):
        found.extend(_payload(payload, ["payload"], 1))
    return found


def _clean(value: dict[str, Any] | list[Any], depth: int) -> bool:
    """Whether a payload tree is within the limits: the quick pass every event takes. Only a
    tree that fails it is walked again by `_payload`, which says where."""
    if depth > MAX_DEPTH:
        return False
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        if isinstance(key, str) and NUL in key:
            return False
        if isinstance(child, str):
            if NUL in child:
                return False
        elif isinstance(child, dict | list) and not _clean(child, depth + 1):
            return False
    return True


def _timestamp(text: str) -> list[str]:
    if _plainly_in_range(text):
        return []
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        return []  # the schema's format check speaks for malformed timestamps
    offset = moment.utcoffset()
    if offset is not None and abs(offset) > MAX_OFFSET:
        return [f"{_quote(text)}: the UTC offset must be within ±15:59"]
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return [f"{_quote(text)}: in UTC it falls outside the years 1 to 9999"]
    return []


def _plainly_in_range(text: str) -> bool:
    """The common case, decided without parsing: a year from 0002 to 9998 (no offset can move
    it out of 1..9999) and `Z`, or an offset of at most 15 hours."""
    if len(text) < 20 or not "0002" <= text[:4] <= "9998":
        return False
    if text[-1] in "Zz":
        return True
    return text[-6] in "+-" and text[-5:-3] <= "15" and text[-3] == ":"


def _payload(value: dict[str, Any] | list[Any], parts: list[str],
             depth: int) -> list[tuple[list[str], str]]:
    """The first problem found in the payload tree, depth first (one is enough to reject), as
    `_clean` walks it. `parts` is the path down to `value`, grown and shrunk as the walk goes."""
    if depth > MAX_DEPTH:
        return [(list(parts), f"is nested deeper than {MAX_DEPTH} levels")]
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        if isinstance(key, str) and NUL in key:
            return [(list(parts), "has a key that contains the NUL character (U+0000)")]
        if isinstance(child, str):
            if NUL in child:
                return [([*parts, str(key)], "must not contain the NUL character (U+0000)")]
        elif isinstance(child, dict | list):
            parts.append(str(key))
            found = _payload(child, parts, depth + 1)
            parts.pop()
            if found:
                return found
    return []


def _problems(index: int, error: ValidationError) -> list[Problem]:
    parts = [str(p) for p in error.absolute_path]
    # `required` fails on the object itself: point at the missing field instead, so that each
    # one is its own problem, at its own path.
    if error.validator == "required" and isinstance(error.instance, dict):
        for name in error.validator_value:
            if name not in error.instance and repr(name) in error.message:
                return [_problem(index, [*parts, name], error.message)]
    return [_problem(index, parts, error.message)]


def _problem(index: int, parts: list[str], message: str) -> Problem:
    clipped = message if len(message) <= MAX_TEXT else message[:MAX_TEXT - 1] + "…"
    return {"index": index, "path": _pointer(parts), "message": clipped}


def _pointer(parts: list[str]) -> str:
    """RFC 6901 JSON Pointer; the empty string points at the event itself. Of at most
    MAX_TEXT characters: a longer one is cut to the deepest enclosing value that fits."""
    pointer = ""
    for part in parts:
        step = "/" + part.replace("~", "~0").replace("/", "~1")
        if len(pointer) + len(step) > MAX_TEXT:
            break
        pointer += step
    return pointer
