"""`POST /v1/logs`: OpenTelemetry logs over OTLP/HTTP (SPEC §3), each log record an event.

The body is an `ExportLogsServiceRequest` in protobuf (`application/x-protobuf`) or in OTLP's
JSON (`application/json`: trace and span ids in hex, enums as integers, 64-bit integers as
strings), gzip allowed (aiohttp inflates it chunk by chunk, and `client_max_size`,
MAX_BODY_BYTES, stops the inflated body: a gzip bomb is a 413, never inflated whole). Both
are read into the classes of `opentelemetry-proto`, so both give the same events.

The mapping (README, "OpenTelemetry (OTLP/HTTP)"):
- topic: the resource attribute OTLP_TOPIC_ATTRIBUTE (`service.name`), else `unknown_service`;
- source: the resource's `service.instance.id`, else its `host.name`, else `unknown_instance`;
- event_id: the record's `log.record.uid` attribute, else the SHA-256 (hex) of the record, its
  scope and its resource, each serialized deterministically: a re-sent batch is duplicates;
- timestamp: `time_unix_nano`, else `observed_time_unix_nano`, else the time ingest read it;
- payload: everything else the record, its scope and its resource carry.

A record that fails the checks of `/publish` (shared/validation.py, MAX_EVENT_BYTES) is
rejected alone: the answer is a 200 whose `partial_success` counts it and says why, and the
valid records are enqueued. What refuses a request as a whole stays whole, as for `/publish`:
a key's limits (403), its rate (429), MAX_TOPICS (422), the backlog (503).

Errors past the key check are answered as OTLP says, with a `google.rpc.Status` in the
request's encoding (protobuf for protobuf, else JSON); those of the key check (401, 403 for the
scope, 503 before the keys were read) are the API's JSON errors, like every route's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from services.ingest.errors import ApiError
from shared import validation
from shared.exceptions import ConfigurationError
from shared.settings import Settings

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
UNKNOWN_TOPIC = "unknown_service"  # the OpenTelemetry SDKs' own service.name when none is set
UNKNOWN_SOURCE = "unknown_instance"
RECORD_UID = "log.record.uid"
# The first problems the `error_message` of a partial success names; the rest are counted.
LISTED_REJECTIONS = 10
# google.rpc.Code of each HTTP status we answer (OTLP: clients may only log it).
GRPC_CODES = {400: 3, 403: 7, 408: 4, 413: 8, 415: 3, 422: 3, 429: 8, 503: 14}


class Records(NamedTuple):
    events: list[dict[str, Any]]  # valid events, in record order
    serialized: list[bytes]  # each as the stream keeps it
    rejected: int
    problems: list[str]  # the first LISTED_REJECTIONS reasons


# -- reading the request -------------------------------------------------------------------------

def encoding(request: web.Request) -> str:
    """The media type the request is in, or 415."""
    if request.content_type in (PROTOBUF, JSON):
        return request.content_type
    raise ApiError(415, "unsupported_media_type",
                   f"send Content-Type: {PROTOBUF} or {JSON}, not {request.content_type!r}")


class Decoded(NamedTuple):
    message: ExportLogsServiceRequest
    # For a JSON body: for each record, in order, what `_plain_record` made of it (its message
    # in `message` is then an empty stand-in), or None (its message is the record).
    hints: list[_Plain | None] | None = None


def decode(body: bytes, media_type: str) -> ExportLogsServiceRequest:
    """The export request the body holds, every record in its message (for JSON, those read
    by `_plain_record` built again the general way); or 400 `invalid_body`."""
    message, hints = read(body, media_type)
    if hints:
        stand_ins = (record for resource in message.resource_logs
                     for scope in resource.scope_logs for record in scope.log_records)
        for record, hint in zip(stand_ins, hints, strict=True):
            if hint is not None:
                record.CopyFrom(LogRecord(**_from_json(_LOG_RECORD, hint.json, hint.depth)))
    return message


def read(body: bytes, media_type: str) -> Decoded:
    """The export request the body holds, and for JSON its hints; or 400 `invalid_body`."""
    message = ExportLogsServiceRequest()
    hints = None
    try:
        if media_type == PROTOBUF:
            message.ParseFromString(body)
            message.DiscardUnknownFields()  # the digest of a record is that of what we read
        else:
            kwargs = _from_json(_REQUEST, orjson.loads(body))
            message = ExportLogsServiceRequest(**kwargs)  # built: no unknown fields
            hints = [record if type(record) is _Plain else None
                     for resource in kwargs.get("resource_logs", ())
                     for scope in resource.get("scope_logs", ())
                     for record in scope.get("log_records", ())]
    except (DecodeError, orjson.JSONDecodeError, ValueError, TypeError, KeyError,
            AttributeError, RecursionError, binascii.Error) as error:
        raise ApiError(400, "invalid_body",
                       f"the body is not an OTLP ExportLogsServiceRequest in {media_type}: "
                       f"{str(error)[:300]}") from None
    return Decoded(message, hints)


# OTLP's JSON to the messages' constructors, which take nested dicts and build the messages in
# C: about half what protobuf's json_format.ParseDict costs (which also wants base64 ids).
# Driven by the message descriptors: a field by its JSON name or its own, unknown ones ignored
# (as OTLP asks), enums by number or name, 64-bit integers as numbers or strings, trace and span
# ids in hex, other bytes in base64. A value of the wrong type fails the constructor: 400.
_REQUEST = ExportLogsServiceRequest.DESCRIPTOR
_HEX_IDS = {"trace_id", "span_id"}
# As deep as protobuf's parser lets a binary request nest: past it the messages could be built
# but not serialized (the digest of a record).
MAX_MESSAGE_DEPTH = 100
_INTEGERS = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
             FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
             FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_INT32,
             FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32,
             FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SINT32}
_FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# For each field of a message, by both its names: its own name, whether it repeats, and the
# conversion of a JSON value to what the constructor takes (the message to read, at a depth).
_Step = tuple[str, bool, Callable[[Any, int], Any]]


@cache
def _plan(descriptor: Descriptor) -> dict[str, _Step]:
    plan: dict[str, _Step] = {}
    for field in descriptor.fields:
        plan[field.name] = plan[field.json_name] = (
            field.name, _repeated(field), _converter(field))
    return plan


def _repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf 6+; `label` before
    if repeated is None:
        return bool(field.label == FieldDescriptor.LABEL_REPEATED)
    return bool(repeated)


def _from_json(descriptor: Descriptor, value: Any, depth: int = 1) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{descriptor.name} must be a JSON object")
    if depth > MAX_MESSAGE_DEPTH:
        raise ValueError(f"messages nested deeper than {MAX_MESSAGE_DEPTH} levels")
    plan = _plan(descriptor)
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        step = plan.get(key)
        if step is None or item is None:
            continue
        name, repeated, convert = step
        # Most fields of a record, inline: strings, integers, ids.
        if convert is _as_is:
            kwargs[name] = item
        elif convert is _integer_value:
            if type(item) is str and item.isdigit() and item.isascii():
                kwargs[name] = int(item)
            else:
                kwargs[name] = _integer(key, item)
        elif convert is _hex_id:
            kwargs[name] = bytes.fromhex(item if type(item) is str else _string(key, item))
        elif repeated:
            if not isinstance(item, list):
                raise TypeError(f"{key} must be an array")
            kwargs[name] = [convert(each, depth) for each in item]
        else:
            kwargs[name] = convert(item, depth)
    return kwargs


# The values and attributes most records are made of, read without the plan: an AnyValue of a
# string alone, a KeyValue of a key and such a value. Anything else (another shape, a wrong
# type, an unknown field) goes the general way above, which reads it the same.
_ANY_VALUE = AnyValue.DESCRIPTOR
_KEY_VALUE = KeyValue.DESCRIPTOR


def _any_value(value: Any, depth: int) -> dict[str, Any]:
    if type(value) is dict and len(value) == 1 and depth < MAX_MESSAGE_DEPTH:
        string = value.get("stringValue")
        if type(string) is str:
            return {"string_value": string}
        number = value.get("intValue")
        if type(number) is str and number.isdigit() and number.isascii():
            return {"int_value": int(number)}
    return _from_json(_ANY_VALUE, value, depth + 1)


def _key_value(pair: Any, depth: int) -> dict[str, Any]:
    if type(pair) is dict and len(pair) == 2:
        key, value = pair.get("key"), pair.get("value")
        if type(key) is str and type(value) is dict and depth < MAX_MESSAGE_DEPTH - 1:
            if len(value) == 1 and type(string := value.get("stringValue")) is str:
                return {"key": key, "value": {"string_value": string}}  # _any_value's, inline
            return {"key": key, "value": _any_value(value, depth + 1)}
    return _from_json(_KEY_VALUE, pair, depth + 1)


# The records most requests are made of, read straight into their event's payload and their
# serialization (for the digest), their messages not built: a record of known fields of the
# plain types (strings, integers in range, hex ids, severity by number or name) whose body
# and attribute values are strings, integers, booleans or finite doubles. The serialization
# is protobuf's deterministic one of the record the general way builds (fields by number,
# zero values left out: tests/unit/test_otlp.py checks it against protobuf's, with
# Hypothesis). Any other record goes the general way.
_LOG_RECORD = LogRecord.DESCRIPTOR


class _Plain(dict[str, Any]):
    """A record read by `_plain_record`: an empty dict, so that its message is built as an
    empty stand-in (the request keeps its count and order), with what was read of it."""

    __slots__ = ("depth", "json", "nanos", "payload", "serialized")
    payload: dict[str, Any]  # as `record_json` reads it from the record's message
    serialized: bytes  # as the message's SerializeToString(deterministic=True)
    nanos: int  # time_unix_nano, else observed_time_unix_nano
    json: dict[str, Any]  # the record's JSON, to build its message (`decode`)
    depth: int


def _log_record(value: Any, depth: int) -> dict[str, Any]:
    plain = _plain_record(value) if type(value) is dict else None
    if plain is None:
        return _from_json(_LOG_RECORD, value, depth + 1)
    plain.json, plain.depth = value, depth + 1
    return plain


_SEVERITIES = {value.name: value.number
               for value in _LOG_RECORD.fields_by_name["severity_number"].enum_type.values}
_U32, _U64, _I64 = 2**32, 2**64, 2**63
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack


def _varint(number: int) -> bytes:
    if number < 0x80:
        return _BYTES[number]
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_BYTES = [bytes((i,)) for i in range(0x80)]


def _unsigned(value: Any, limit: int) -> int | None:
    """A plain unsigned integer below `limit` (a number, or digits in a string; null is 0),
    else None."""
    if type(value) is str:
        if value.isdigit() and value.isascii():
            number = int(value)
            return number if number < limit else None
        return None
    if value is None:
        return 0
    if type(value) is int and 0 <= value < limit:
        return value
    return None


def _plain_value(value: Any) -> tuple[Any, bytes] | None:
    """An AnyValue of one plain value but a string: as `any_value_json` reads it, and
    serialized. (`_plain_record` reads strings.)"""
    if type(value) is not dict or len(value) != 1:
        return None
    for key, item in value.items():
        if key == "intValue":
            number: int | None
            if type(item) is int:
                number = item if -_I64 <= item < _I64 else None
            else:
                number = _unsigned(item, _I64) if type(item) is str else None
            if number is not None:
                return number, b"\x18" + _varint(number % _U64)
        elif key == "boolValue" and type(item) is bool:
            return item, b"\x10\x01" if item else b"\x10\x00"
        elif key == "doubleValue" and type(item) is float and math.isfinite(item):
            return item, b"\x21" + _DOUBLE(item)
    return None


@lru_cache(maxsize=1024)
def _key_field(key: str) -> bytes:
    """A KeyValue's key, serialized, and the tag of its value (proto3 leaves an empty key
    out)."""
    encoded = key.encode()
    return (b"\x0a" + _varint(len(encoded)) + encoded if encoded else b"") + b"\x12"


# A record's fields by their JSON names: a record that names one by its own name (or has
# fields we do not know) goes the general way.
_JSON_NAMES = frozenset(field.json_name for field in _LOG_RECORD.fields)


def _plain_record(record: dict[str, Any]) -> _Plain | None:
    """The record as `_Plain`, if it is one (above); else None."""
    if not record.keys() <= _JSON_NAMES:
        return None
    get = record.get  # null is unset, as in _from_json
    times = _unsigned(get("timeUnixNano"), _U64)
    observed = _unsigned(get("observedTimeUnixNano"), _U64)
    flags = _unsigned(get("flags"), _U32)
    dropped = _unsigned(get("droppedAttributesCount"), _U32)
    severity = get("severityNumber")
    if type(severity) is str:
        severity = _SEVERITIES.get(severity)
    elif severity is None:
        severity = 0
    text, event_name = get("severityText"), get("eventName")
    trace, span = get("traceId"), get("spanId")
    if (times is None or observed is None or flags is None or dropped is None
            or type(severity) is not int or not 0 <= severity < 2**31
            or (type(text) is not str and text is not None)
            or (type(event_name) is not str and event_name is not None)
            or (type(trace) is not str and trace is not None)
            or (type(span) is not str and span is not None)):
        return None
    try:
        trace_id = bytes.fromhex(trace) if trace else b""
        span_id = bytes.fromhex(span) if span else b""
    except ValueError:
        return None
    serialized = b"\x09" + _FIXED64(times) if times else b""
    if severity:
        serialized += b"\x10" + _varint(severity)
    if text:
        encoded = text.encode()
        serialized += b"\x1a" + _varint(len(encoded)) + encoded
    else:
        text = ""
    body = get("body")
    if body is not None:
        if type(body) is dict and len(body) == 1 and type(
                string := body.get("stringValue")) is str:
            encoded = string.encode()
            value = b"\x0a" + _varint(len(encoded)) + encoded
            body = string
        elif (plain := _plain_value(body)) is not None:
            body, value = plain
        else:
            return None
        serialized += b"\x2a" + _varint(len(value)) + value
    attributes: dict[str, Any] = {}
    pairs = get("attributes")
    if pairs is not None:
        if type(pairs) is not list:
            return None
        for pair in pairs:
            if type(pair) is not dict or len(pair) != 2:
                return None
            key, given = pair.get("key"), pair.get("value")
            if type(key) is not str or type(given) is not dict or len(given) != 1:
                return None
            if type(string := given.get("stringValue")) is str:
                attributes[key] = string
                encoded = string.encode()
                value = b"\x0a" + _varint(len(encoded)) + encoded
            elif (plain := _plain_value(given)) is not None:
                attributes[key], value = plain
            else:
                return None
            pair_bytes = _key_field(key) + _varint(len(value)) + value
            serialized += b"\x32" + _varint(len(pair_bytes)) + pair_bytes
    if dropped:
        serialized += b"\x38" + _varint(dropped)
    if flags:
        serialized += b"\x45" + _FIXED32(flags)
    if trace_id:
        serialized += b"\x4a" + _varint(len(trace_id)) + trace_id
    if span_id:
        serialized += b"\x52" + _varint(len(span_id)) + span_id
    if observed:
        serialized += b"\x59" + _FIXED64(observed)
    if event_name:
        encoded = event_name.encode()
        serialized += b"\x62" + _varint(len(encoded)) + encoded
    plain_record = _Plain()
    plain_record.serialized = serialized
    plain_record.nanos = times or observed
    plain_record.payload = payload = {
        "body": body, "severity_number": severity, "severity_text": text,
        "attributes": attributes, "trace_id": trace_id.hex(), "span_id": span_id.hex(),
        "flags": flags, "time_unix_nano": str(times),
        "observed_time_unix_nano": str(observed)}
    if event_name:
        payload["event_name"] = event_name
    if dropped:
        payload["dropped_attributes_count"] = dropped
    return plain_record


def _converter(field: FieldDescriptor) -> Callable[[Any, int], Any]:
    kind, name = field.type, field.json_name
    if kind == FieldDescriptor.TYPE_MESSAGE:
        message = field.message_type
        if message is _ANY_VALUE:
            return _any_value
        if message is _KEY_VALUE:
            return _key_value
        if message is _LOG_RECORD:
            return _log_record
        return lambda value, depth: _from_json(message, value, depth + 1)
    if kind in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BOOL) and not _repeated(field):
        return _as_is  # read in _from_json; the constructor checks the type
    if kind in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BOOL):
        return lambda value, depth: value
    if kind in _INTEGERS and not _repeated(field):
        return _integer_value  # read in _from_json
    if kind in _INTEGERS:
        return lambda value, depth: _integer(name, value)
    if kind == FieldDescriptor.TYPE_ENUM:
        names = field.enum_type.values_by_name
        return lambda value, depth: names[value].number if isinstance(value, str) else value
    if kind == FieldDescriptor.TYPE_BYTES:
        if field.name in _HEX_IDS and not _repeated(field):
            return _hex_id  # read in _from_json
        if field.name in _HEX_IDS:
            return lambda value, depth: bytes.fromhex(_string(name, value))
        return lambda value, depth: base64.b64decode(_string(name, value), validate=True)
    if kind in _FLOATS:
        return lambda value, depth: _float(name, value)
    raise ConfigurationError(f"OTLP field {name}: a type the JSON reader does not know")


def _as_is(value: Any, depth: int) -> Any:
    raise AssertionError("read in _from_json")  # pragma: no cover


def _integer_value(value: Any, depth: int) -> int:
    raise AssertionError("read in _from_json")  # pragma: no cover


def _hex_id(value: Any, depth: int) -> bytes:
    raise AssertionError("read in _from_json")  # pragma: no cover


def _integer(name: str, value: Any) -> int:
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    return value


def _float(name: str, value: Any) -> float:
    if isinstance(value, str):
        return _SPECIAL_FLOATS[value] if value in _SPECIAL_FLOATS else float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number")
    return value


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def count(message: ExportLogsServiceRequest) -> int:
    return sum(len(scope.log_records) for resource in message.resource_logs
               for scope in resource.scope_logs)


# -- the mapping ---------------------------------------------------------------------------------

def records(message: ExportLogsServiceRequest, settings: Settings,
            hints: list[_Plain | None] | None = None) -> Records:
    """Every log record of the request as an event; those that fail /publish's checks are
    counted as rejected, the first few named.

    An event's resource and scope, the same for every record of a scope, are checked once
    (with its topic and source), not with each record: the checks stop at each value, so an
    event passes them exactly when its own part and its shared part both do."""
    events: list[dict[str, Any]] = []
    serialized: list[bytes] = []
    problems: list[str] = []
    rejected = 0
    mapped = list(_events(message, settings.otlp_topic_attribute, hints))
    # Most requests are all valid: one pass over them says so; else each record's own.
    clean = not validation.report([e for e, _, found in mapped if not found], limit=0).total
    for index, (event, shared, shared_problems) in enumerate(mapped):
        why = shared_problems or ([] if clean else [
            f"{p['path'] or '/'}: {p['message']}" for p in validation.iter_problems([event])])
        raw = b""
        if not why:
            event["payload"].update(shared)
            raw = orjson.dumps(event)
            if len(raw) > settings.max_event_bytes:
                why = [f"{len(raw)} bytes of JSON, over MAX_EVENT_BYTES "
                       f"({settings.max_event_bytes})"]
        if why:
            rejected += 1
            if len(problems) < LISTED_REJECTIONS:
                problems.append(f"log record {index}: {'; '.join(why)}")
            continue
        events.append(event)
        serialized.append(raw)
    return Records(events, serialized, rejected, problems)


# An event of valid fixed values but for those checked: what a scope's records share.
_STAND_IN = {"event_id": "-", "timestamp": "2000-01-01T00:00:00Z"}


def _shared_problems(topic: str, source: str, shared: dict[str, Any]) -> list[str]:
    """The problems of what a scope's records share: their topic, source, resource, scope."""
    event = {**_STAND_IN, "topic": topic, "source": source, "payload": shared}
    return [f"{p['path'] or '/'}: {p['message']}" for p in validation.iter_problems([event])]


def _events(message: ExportLogsServiceRequest, topic_attribute: str,
            hints: list[_Plain | None] | None = None
            ) -> Iterator[tuple[dict[str, Any], dict[str, Any], list[str]]]:
    """Each record as an event without its resource and scope, those (shared by the records of
    a scope, to add to its payload), and their problems."""
    received = None
    index = 0
    for resource_logs in message.resource_logs:
        resource = resource_logs.resource
        attributes = attributes_json(resource.attributes)
        topic = _name(attributes.get(topic_attribute)) or UNKNOWN_TOPIC
        source = (_name(attributes.get("service.instance.id"))
                  or _name(attributes.get("host.name")) or UNKNOWN_SOURCE)
        resource_json = {"attributes": attributes, "schema_url": resource_logs.schema_url,
                         **_dropped(resource.dropped_attributes_count)}
        resource_bytes = _framed(resource.SerializeToString(deterministic=True),
                                 resource_logs.schema_url.encode())
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            shared = {"resource": resource_json, "scope": {
                "name": scope.name, "version": scope.version,
                "attributes": attributes_json(scope.attributes),
                "schema_url": scope_logs.schema_url, **_dropped(scope.dropped_attributes_count)}}
            shared_problems = _shared_problems(topic, source, shared)
            identity = hashlib.sha256(resource_bytes + _framed(
                scope.SerializeToString(deterministic=True), scope_logs.schema_url.encode()))
            for record in scope_logs.log_records:
                plain = None if hints is None else hints[index]
                index += 1
                if plain is None:
                    nanos = record.time_unix_nano or record.observed_time_unix_nano
                    payload = record_json(record)
                else:  # the record's message is a stand-in: what its JSON said
                    nanos, payload = plain.nanos, plain.payload
                if not nanos:
                    received = received or time.time_ns()
                    nanos = received
                uid = payload["attributes"].get(RECORD_UID)
                if isinstance(uid, str) and uid:
                    event_id = uid
                else:
                    event_id = _digest(identity, record.SerializeToString(deterministic=True)
                                       if plain is None else plain.serialized)
                yield ({"topic": topic, "event_id": event_id, "timestamp": _rfc3339(nanos),
                        "source": source, "payload": payload}, shared, shared_problems)


def record_json(record: LogRecord) -> dict[str, Any]:
    """What the record carries, as JSON: ids in hex, 64-bit times as strings (as OTLP's JSON).
    (`_plain_record` makes the same of a plain record's JSON.)"""
    payload = {
        "body": any_value_json(record.body),
        "severity_number": record.severity_number,
        "severity_text": record.severity_text,
        "attributes": attributes_json(record.attributes),
        "trace_id": record.trace_id.hex(),
        "span_id": record.span_id.hex(),
        "flags": record.flags,
        "time_unix_nano": str(record.time_unix_nano),
        "observed_time_unix_nano": str(record.observed_time_unix_nano),
    }
    if event_name := record.event_name:
        payload["event_name"] = event_name
    if dropped := record.dropped_attributes_count:
        payload["dropped_attributes_count"] = dropped
    return payload


def attributes_json(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    """Key-value pairs as a JSON object (a key given twice: the last value)."""
    return {pair.key: any_value_json(pair.value) for pair in attributes}


def any_value_json(value: AnyValue) -> Any:
    """An AnyValue as JSON: bytes in base64 and non-finite doubles as strings, as OTLP's JSON
    writes them; an empty value is null."""
    kind = value.WhichOneof("value")
    if kind == "string_value":  # most values: first
        return value.string_value
    if kind is None:
        return None
    if kind == "kvlist_value":
        return attributes_json(value.kvlist_value.values)
    if kind == "array_value":
        return [any_value_json(item) for item in value.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "double_value" and not math.isfinite(value.double_value):
        return str(value.double_value).replace("inf", "Infinity").replace("nan", "NaN")
    return getattr(value, kind)


def _name(value: Any) -> str:
    """An attribute's value as a name: a string as it is, another value as its JSON."""
    if value is None or value == "":
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _dropped(count: int) -> dict[str, int]:
    return {"dropped_attributes_count": count} if count else {}


def _framed(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">Q", len(part)) + part for part in parts)


def _digest(identity: Any, serialized: bytes) -> str:
    """The SHA-256 of the record's resource and scope (`identity`, hashed once per scope) and
    the record (serialized deterministically), each framed by its length."""
    digest = identity.copy()
    digest.update(_LENGTH(len(serialized)) + serialized)
    return str(digest.hexdigest())


_LENGTH = struct.Struct(">Q").pack


def _rfc3339(nanos: int) -> str:
    seconds, rest = divmod(nanos, 1_000_000_000)
    return f"{_second(seconds)}.{rest // 1000:06d}Z"


@lru_cache(maxsize=256)
def _second(seconds: int) -> str:
    """A second as RFC 3339 (the records of a batch share a few): 10 ns instead of 2 µs."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# -- answers -------------------------------------------------------------------------------------

def answer(message: Message, media_type: str, status: int = 200,
           headers: dict[str, str] | None = None) -> web.Response:
    if media_type == PROTOBUF:
        body = message.SerializeToString()
    else:
        body = orjson.dumps(json_format.MessageToDict(message))
    return web.Response(body=body, status=status, headers=headers, content_type=media_type)


def success(rejected: int, problems: list[str]) -> ExportLogsServiceResponse:
    response = ExportLogsServiceResponse()
    if rejected:
        more = f"; and {rejected - len(problems)} more" if rejected > len(problems) else ""
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = (
            f"{rejected} log record(s) rejected: {'; '.join(problems)}{more}")[:4000]
    return response


def error_answer(error: ApiError, media_type: str) -> web.Response:
    """An error as OTLP answers one: a `google.rpc.Status`, our code leading its message."""
    status = status_pb2.Status(code=GRPC_CODES.get(error.status, 2),
                               message=f"{error.error}: {error.message}")
    return answer(status, media_type, error.status, error.headers)

