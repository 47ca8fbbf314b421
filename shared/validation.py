"""Event validation against `schema/event.schema.json`, compiled once per process.

The schema file is the single source of truth for what an event is. It is compiled twice: to
Python code by fastjsonschema, which answers "valid?" about ten times faster and is all a good
request needs; and by jsonschema, which names every problem, for the requests that have one.
This module turns the verdicts into the error details of SPEC §3: `{"index", "path",
"message"}` for each problem.
A few limits no JSON Schema can say come on top, each because an event past it could be
accepted but never stored or read back: no NUL character (PostgreSQL's text and jsonb cannot
hold it), a timestamp whose offset PostgreSQL can represent and whose UTC time falls in years
1 to 9999, and a payload nested at most MAX_DEPTH levels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, TypedDict

import fastjsonschema
import orjson
from fastjsonschema import JsonSchemaValueException
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from rfc3339_validator import validate_rfc3339

from shared.paths import SCHEMA_FILE


class Problem(TypedDict):
    index: int
    path: str
    message: str


@cache
def _fast_check(schema_file: Path = SCHEMA_FILE) -> Callable[[Any], Any]:
    """Raises on the first problem; the same formats as `_validator` (RFC 3339 date-times)."""
    schema = orjson.loads(schema_file.read_bytes())
    check: Callable[[Any], Any] = fastjsonschema.compile(
        schema, formats={"date-time": validate_rfc3339})
    return check


@cache
def _validator(schema_file: Path = SCHEMA_FILE) -> Draft202012Validator:
    schema = orjson.loads(schema_file.read_bytes())
    Draft202012Validator.check_schema(schema)
    # Without a FormatChecker, `format: date-time` is only an annotation and bad timestamps pass.
    return Draft202012Validator(schema, format_checker=FormatChecker(["date-time"]))


MAX_DEPTH = 100  # levels of nesting in a payload
# Problems a 422 lists: the first ones, in event order, and how many there are in all. A client
# fixes those and sends again; the answer stays small whatever it sent.
MAX_DETAILS = 100
MAX_OFFSET = timedelta(hours=15, minutes=59, seconds=59)  # PostgreSQL's limit on a UTC offset
NUL = "\x00"


def problems(events: list[Any]) -> list[Problem]:
    """Every problem of every event, in event order; empty when all of them are valid."""
    return list(iter_problems(events))


def iter_problems(events: list[Any]) -> Iterator[Problem]:
    """The problems of `problems`, one at a time: a caller that lists only the first few pays
    for the rest only as much as counting them costs (an event of 250,000 unknown fields is
    250,000 problems)."""
    fast_check = _fast_check()
    try:
        for event in events:
            fast_check(event)
    except JsonSchemaValueException:
        yield from _every_problem(events)
        return
    for index, event in enumerate(events):
        for path, message in _storable(event):
            yield {"index": index, "path": path, "message": message}


def _every_problem(events: list[Any]) -> Iterator[Problem]:
    validator = _validator()
    for index, event in enumerate(events):
        errors = sorted(validator.iter_errors(event), key=lambda e: list(e.absolute_path))
        for error in errors:
            yield from _problems(index, error)
        if isinstance(event, dict):
            for path, message in _storable(event):
                yield {"index": index, "path": path, "message": message}


def _storable(event: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, why) for what the store could not hold, in fields the schema found well typed."""
    found = [(f"/{name}", "must not contain the NUL character (U+0000)")
             for name in ("topic", "event_id", "source")
             if isinstance(event.get(name), str) and NUL in event[name]]
    timestamp = event.get("timestamp")
    if isinstance(timestamp, str):
        found.extend(("/timestamp", why) for why in _timestamp(timestamp))
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
        return [f"{text!r}: the UTC offset must be within ±15:59"]
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return [f"{text!r}: in UTC it falls outside the years 1 to 9999"]
    return []


def _plainly_in_range(text: str) -> bool:
    """The common case, decided without parsing: a year from 0002 to 9998 (no offset can move
    it out of 1..9999) and `Z`, or an offset of at most 15 hours."""
    if len(text) < 20 or not "0002" <= text[:4] <= "9998":
        return False
    if text[-1] in "Zz":
        return True
    return text[-6] in "+-" and text[-5:-3] <= "15" and text[-3] == ":"


def _payload(value: Any, parts: list[str], depth: int) -> list[tuple[str, str]]:
    """The first problem found in the payload tree, depth first (one is enough to reject)."""
    if depth > MAX_DEPTH:
        return [(_pointer(parts), f"is nested deeper than {MAX_DEPTH} levels")]
    if isinstance(value, str):
        return [(_pointer(parts), "must not contain the NUL character (U+0000)")] \
            if NUL in value else []
    children: Any = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        if isinstance(key, str) and NUL in key:
            return [(_pointer(parts), "has a key that contains the NUL character (U+0000)")]
        found = _payload(child, [*parts, str(key)], depth + 1)
        if found:
            return found
    return []


def _problems(index: int, error: ValidationError) -> Iterator[Problem]:
    parts = [str(p) for p in error.absolute_path]
    # `required` and `additionalProperties` fail on the object itself: point at the field instead,
    # one problem per field, so a client can fix them all in one go.
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        for name in error.instance:
            if name not in allowed:
                yield {"index": index, "path": _pointer([*parts, name]),
                       "message": f"unknown field {name!r} is not allowed"}
        return
    if error.validator == "required" and isinstance(error.instance, dict):
        for name in error.validator_value:
            if name not in error.instance and repr(name) in error.message:
                yield {"index": index, "path": _pointer([*parts, name]),
                       "message": error.message}
                return
    yield {"index": index, "path": _pointer(parts), "message": error.message}


def _pointer(parts: list[str]) -> str:
    """RFC 6901 JSON Pointer; the empty string points at the event itself."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)
