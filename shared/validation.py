"""Event validation against `schema/event.schema.json`, compiled once per process.

The schema file is the single source of truth for what an event is; this module only turns its
verdicts into the error details of SPEC §3: `{"index", "path", "message"}` for each problem.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, TypedDict

import orjson
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from shared.paths import SCHEMA_FILE


class Problem(TypedDict):
    index: int
    path: str
    message: str


@cache
def _validator(schema_file: Path = SCHEMA_FILE) -> Draft202012Validator:
    schema = orjson.loads(schema_file.read_bytes())
    Draft202012Validator.check_schema(schema)
    # Without a FormatChecker, `format: date-time` is only an annotation and bad timestamps pass.
    return Draft202012Validator(schema, format_checker=FormatChecker(["date-time"]))


def problems(events: list[Any]) -> list[Problem]:
    """Every problem of every event, in event order; empty when all of them are valid."""
    validator = _validator()
    found: list[Problem] = []
    for index, event in enumerate(events):
        errors = sorted(validator.iter_errors(event), key=lambda e: list(e.absolute_path))
        for error in errors:
            found.extend(_problems(index, error))
    return found


def _problems(index: int, error: ValidationError) -> list[Problem]:
    parts = [str(p) for p in error.absolute_path]
    # `required` and `additionalProperties` fail on the object itself: point at the field instead,
    # one problem per field, so a client can fix them all in one go.
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        return [
            {"index": index, "path": _pointer([*parts, name]),
             "message": f"unknown field {name!r} is not allowed"}
            for name in error.instance
            if name not in allowed
        ]
    if error.validator == "required" and isinstance(error.instance, dict):
        for name in error.validator_value:
            if name not in error.instance and repr(name) in error.message:
                return [{"index": index, "path": _pointer([*parts, name]),
                         "message": error.message}]
    return [{"index": index, "path": _pointer(parts), "message": error.message}]


def _pointer(parts: list[str]) -> str:
    """RFC 6901 JSON Pointer; the empty string points at the event itself."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)
