"""Hostile input, thrown by Hypothesis at `POST /v1/logs` of the real ingest app (SPEC §3, §4).

The app serves from a thread (`LiveIngest`, with the small limits of tests/integration/
test_hostile_input.py: 16 KiB bodies, 8 records) on the session's real Redis and PostgreSQL, so
a 5xx can only be a bug. Two properties hold for every request:

1. no input produces a 5xx, and every error answer is a `google.rpc.Status` in the request's
   encoding (services/ingest/otlp.py): protobuf for `application/x-protobuf`, OTLP's JSON
   `{"code", "message"}` for anything else (JSON, or an unsupported type's 415);
2. a 4xx changes no counter (Redis `received`, the stream's length, PostgreSQL's counters), and
   a 200 `ExportLogsServiceResponse` grows `received` and the stream by exactly the records sent
   less its `partial_success.rejected_log_records`, which is at most the records sent, with an
   `error_message` exactly when it is not 0.

The bodies: arbitrary bytes under any content type; structurally valid export requests built
with opentelemetry-proto (AnyValues of every kind, nested; ids of any length; times 0 and
huge; with and without `service.name` and `log.record.uid`), sent as protobuf and as OTLP's
JSON, gzipped or not, padded to exactly MAX_BODY_BYTES or one byte over; and OTLP JSON with
one thing wrong (a wrong type, an unknown field, a huge number, deep nesting). A valid request
is always answered 200, or 413 when it is over a limit, and its protobuf and JSON forms reject
the same records; a record nested around protobuf's depth limit gets the same status in both.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
from typing import Any

import orjson
from aiohttp.helpers import parse_content_type
from google.protobuf import json_format
from google.rpc import status_pb2
from hypothesis import event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from services.ingest import otlp
from tests.integration.test_hostile_input import (
    MAX_BATCH_EVENTS,
    MAX_BODY_BYTES,
    Answer,
    Ingest,
    Raw,
    encode,
    examples,
    field_values,
    huge_ints,
    ingest,
    json_values,
    nested,
)
from tests.integration.test_otlp import as_otlp_json

__all__ = ["ingest"]  # the fixture, shared with test_hostile_input

OTLP_STATUSES = {200, 400, 413, 415}
few = hypothesis_settings(examples, max_examples=250)


# ----------------------------------------------------------------------------------------------
# One request, and both properties around it


def post_logs(ingest: Ingest, body: bytes, content_type: str | None, *, gzipped: bool = False,
              sent: int | None = None) -> Answer:
    """POST `body` (gzipped first when `gzipped`) to /v1/logs and check both properties;
    `sent` is the records the body holds, when the caller knows (else read from the body)."""
    headers: list[tuple[str, bytes]] = []
    if content_type is not None:
        headers.append(("Content-Type", content_type.encode("latin-1")))
    if gzipped:
        headers.append(("Content-Encoding", b"gzip"))
    before = ingest.counters()
    answer = ingest.send("POST", "/v1/logs", headers=headers,
                         body=gzip.compress(body) if gzipped else body)
    after = ingest.counters()
    assert answer.status != 500, answer.describe()
    assert answer.status < 500, answer.describe()
    assert answer.status in OTLP_STATUSES, answer.describe()
    event(f"status {answer.status}")  # --hypothesis-show-statistics: what the examples reach
    protobuf = is_protobuf(content_type)
    media_type = answer.content_type.split(";")[0].strip()
    assert media_type == (otlp.PROTOBUF if protobuf else otlp.JSON), answer.describe()
    if answer.status != 200:
        assert_status_body(answer, protobuf)
        assert after == before, answer.describe()
        return answer
    response = ExportLogsServiceResponse()
    if protobuf:
        response.ParseFromString(answer.body)
    else:
        json_format.Parse(answer.body, response)
    if sent is None:  # arbitrary bytes the app read: as many records as it read
        sent = otlp.count(otlp.read(body, otlp.PROTOBUF if protobuf else otlp.JSON).message)
    rejected = response.partial_success.rejected_log_records
    assert 0 <= rejected <= sent, answer.describe()
    event("200, no records" if not sent else
          f"200, {'all' if rejected == sent else 'some' if rejected else 'no'} records rejected")
    assert bool(response.partial_success.error_message) == (rejected > 0), answer.describe()
    accepted = sent - rejected
    assert after == dataclasses.replace(
        before, received=before.received + accepted,
        stream_length=before.stream_length + accepted), answer.describe()
    return answer


def is_protobuf(content_type: str | None) -> bool:
    """Whether the app reads the request (and answers) in protobuf: its media type, as aiohttp
    parses it, is OTLP's protobuf one."""
    return content_type is not None and parse_content_type(content_type)[0] == otlp.PROTOBUF


def assert_status_body(answer: Answer, protobuf: bool) -> None:
    """An OTLP error: a `google.rpc.Status` with a code and a message."""
    if protobuf:
        status = status_pb2.Status()
        status.ParseFromString(answer.body)
        code, message = status.code, status.message
    else:
        body = orjson.loads(answer.body)
        assert isinstance(body, dict) and set(body) <= {"code", "message", "details"}, \
            answer.describe()
        code, message = body.get("code"), body.get("message")
    assert isinstance(code, int) and 0 < code <= 16, answer.describe()
    assert isinstance(message, str) and message, answer.describe()


def rejected_of(answer: Answer, protobuf: bool) -> int:
    response = ExportLogsServiceResponse()
    if protobuf:
        response.ParseFromString(answer.body)
    else:
        json_format.Parse(answer.body, response)
    return response.partial_success.rejected_log_records


# ----------------------------------------------------------------------------------------------
# Bodies of arbitrary bytes


PROTOBUF_CONTENT_TYPES = ["application/x-protobuf", "application/x-protobuf; charset=utf-8",
                          "Application/X-Protobuf"]
JSON_CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON"]
otlp_content_types = st.sampled_from(PROTOBUF_CONTENT_TYPES + JSON_CONTENT_TYPES)
any_content_types = st.one_of(
    otlp_content_types, st.none(),
    st.sampled_from(["", "text/plain", "application/protobuf", "application/grpc",
                     "application/x-protobuf+json", "application/octet-stream", "*/*"]),
    field_values.map(lambda raw: raw.decode("latin-1")))


@few
@given(body=st.binary(max_size=300), content_type=any_content_types, gzipped=st.booleans())
def test_no_bytes_body_produces_a_5xx_or_changes_a_count_it_should_not(
        ingest: Ingest, body: bytes, content_type: str | None, gzipped: bool) -> None:
    post_logs(ingest, body, content_type, gzipped=gzipped)


@few
@given(body=st.binary(max_size=100), content_type=otlp_content_types)
def test_a_gzip_header_over_plain_bytes_is_a_400_at_most(
        ingest: Ingest, body: bytes, content_type: str) -> None:
    answer = ingest.send("POST", "/v1/logs", body=b"\x1f\x8b" + body, headers=[
        ("Content-Type", content_type.encode()), ("Content-Encoding", b"gzip")])
    assert answer.status in (200, 400), answer.describe()
    if answer.status == 400:
        assert_status_body(answer, is_protobuf(content_type))


# ----------------------------------------------------------------------------------------------
# Structurally valid export requests


def array_of(values: list[AnyValue]) -> AnyValue:
    return AnyValue(array_value=ArrayValue(values=values))


def kvlist_of(pairs: list[KeyValue]) -> AnyValue:
    return AnyValue(kvlist_value=KeyValueList(values=pairs))


# Mostly text a record may hold; now and then a NUL or over 255 characters (a rejected record).
storable = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
clean = st.text(storable, max_size=12)
keys = st.sampled_from(["service.name", "service.instance.id", "host.name", otlp.RECORD_UID,
                        "", "a", "a"]) | clean | clean
names = st.integers(0, 39).flatmap(
    lambda n: st.just("a\x00b") if n == 0 else st.text(storable, min_size=250, max_size=260)
    if n == 1 else clean)
leaf_values = st.one_of(
    names.map(lambda s: AnyValue(string_value=s)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    (st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, -1, 2**63 - 1, -(2**63)])).map(
        lambda i: AnyValue(int_value=i)),
    (st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, -0.0])).map(
        lambda x: AnyValue(double_value=x)),
    st.binary(max_size=20).map(lambda b: AnyValue(bytes_value=b)),
    st.just(AnyValue()))
any_values = st.recursive(
    leaf_values,
    lambda inner: st.lists(inner, max_size=3).map(array_of) | st.lists(
        st.builds(KeyValue, key=keys, value=inner), max_size=3).map(kvlist_of),
    max_leaves=8)
attributes = st.lists(st.builds(KeyValue, key=keys, value=any_values), max_size=4)
uids = st.one_of(names, st.just(""), st.text(max_size=8).map(lambda s: f"uid-{s}")).map(
    lambda s: KeyValue(key=otlp.RECORD_UID, value=AnyValue(string_value=s))) | st.builds(
    KeyValue, key=st.just(otlp.RECORD_UID), value=any_values)
nanos = st.sampled_from([0, 1, 2**63 - 1, 2**64 - 1, 1_764_064_800_123_456_789]) | st.integers(
    0, 2**64 - 1)
ids = st.binary(max_size=20) | st.binary(min_size=16, max_size=16) | st.binary(min_size=8,
                                                                               max_size=8)
records = st.builds(
    lambda extra, uid, **fields: LogRecord(**fields, attributes=extra + uid),
    extra=attributes, uid=st.lists(uids, max_size=1),
    time_unix_nano=nanos, observed_time_unix_nano=nanos,
    severity_number=st.integers(0, 30), severity_text=clean,
    body=any_values, dropped_attributes_count=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 2**32 - 1), trace_id=ids, span_id=ids, event_name=clean)
service = st.lists(st.builds(
    KeyValue, key=st.sampled_from(["service.name", "service.instance.id", "host.name"]),
    value=leaf_values | any_values), max_size=3)
resources = st.builds(
    lambda named, extra, scopes, schema_url: ResourceLogs(
        resource=Resource(attributes=named + extra), scope_logs=scopes, schema_url=schema_url),
    named=service, extra=attributes, schema_url=clean,
    scopes=st.lists(st.builds(
        ScopeLogs, scope=st.builds(InstrumentationScope, name=names, version=clean,
                                   attributes=attributes,
                                   dropped_attributes_count=st.integers(0, 2**32 - 1)),
        log_records=st.lists(records, max_size=4), schema_url=clean),
        min_size=1, max_size=2))
export_requests = st.lists(resources, min_size=1, max_size=2).map(
    lambda logs: ExportLogsServiceRequest(resource_logs=logs))

UNKNOWN_FIELD = b"\xd2\x3e"  # field 999, length-delimited: read and discarded


def protobuf_padded(body: bytes, padding: str) -> bytes:
    """An unknown field keeps protobuf protobuf: pad to exactly the limit, or one byte over."""
    if padding == "none":
        return body
    target = MAX_BODY_BYTES + (padding == "over_limit")
    for size in range(max(0, target - len(body) - 5), target - len(body) + 1):
        field = UNKNOWN_FIELD + otlp._varint(size) + bytes(size)
        if len(body) + len(field) == target:
            return body + field
    return body  # already over, or too close for a field: sent as it is (its size decides)


def json_padded(body: bytes, padding: str) -> bytes:
    if padding == "none":
        return body
    return body + b" " * max(0, MAX_BODY_BYTES + (padding == "over_limit") - len(body))


paddings = st.sampled_from(["none"] * 6 + ["to_limit", "over_limit"])


def send_request(ingest: Ingest, message: ExportLogsServiceRequest, protobuf: bool,
                 gzipped: bool, padding: str = "none") -> Answer:
    """Send a valid request: 200, or 413 exactly when it is over a limit."""
    if protobuf:
        body = protobuf_padded(message.SerializeToString(), padding)
    else:
        body = json_padded(as_otlp_json(message), padding)
    content_type = otlp.PROTOBUF if protobuf else otlp.JSON
    sent = otlp.count(message)
    answer = post_logs(ingest, body, content_type, gzipped=gzipped, sent=sent)
    over = sent > MAX_BATCH_EVENTS or len(body) > MAX_BODY_BYTES
    assert answer.status == (413 if over else 200), answer.describe()
    return answer


@few
@given(message=export_requests, protobuf=st.booleans(), gzipped=st.booleans(),
       padding=paddings)
def test_a_valid_request_is_answered_200_and_counted_or_413_over_a_limit(
        ingest: Ingest, message: ExportLogsServiceRequest, protobuf: bool, gzipped: bool,
        padding: str) -> None:
    send_request(ingest, message, protobuf, gzipped, padding)


@hypothesis_settings(examples, max_examples=150)
@given(message=export_requests.filter(lambda m: otlp.count(m) <= MAX_BATCH_EVENTS),
       gzipped=st.booleans())
def test_protobuf_and_json_reject_the_same_records(
        ingest: Ingest, message: ExportLogsServiceRequest, gzipped: bool) -> None:
    answers = [send_request(ingest, message, protobuf, gzipped) for protobuf in (True, False)]
    if all(answer.status == 200 for answer in answers):
        assert rejected_of(answers[0], True) == rejected_of(answers[1], False)


# ----------------------------------------------------------------------------------------------
# OTLP JSON with one thing wrong


def places(document: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in a JSON document."""
    found: list[tuple[Any, Any]] = []
    if isinstance(document, dict):
        for key, item in document.items():
            found += [(document, key), *places(item)]
    elif isinstance(document, list):
        for index, item in enumerate(document):
            found += [(document, index), *places(item)]
    return found


OTLP_NAMES = ("resourceLogs", "scopeLogs", "logRecords", "attributes", "body", "value",
              "stringValue", "intValue", "doubleValue", "boolValue", "bytesValue", "arrayValue",
              "kvlistValue", "values", "timeUnixNano", "severityNumber", "traceId", "spanId",
              "flags", "resource", "scope", "resource_logs", "log_records", "time_unix_nano")
wrong_values = st.one_of(
    json_values, huge_ints, st.sampled_from(OTLP_NAMES),
    st.sampled_from(["NaN", "Infinity", "-1", "1e3", "zz", "0x10", "", "SEVERITY_NUMBER_INFO",
                     "SEVERITY_NUMBER_NOPE", "18446744073709551616", "٣"]),
    st.sampled_from([1, 100, 101, 1000, 1025]).flatmap(
        lambda depth: st.builds(nested, st.just(depth), st.booleans())),
    st.sampled_from(["1e400", "-1e400", "1" * 40, "-0", "1.5"]).map(Raw))


@st.composite
def almost_valid_json(draw: st.DrawFn) -> Any:
    """A valid request's OTLP JSON, with one value replaced or one unknown field added."""
    document = orjson.loads(as_otlp_json(draw(export_requests)))
    spots = places(document)
    if not spots or draw(st.booleans()):
        containers = [document] + [c[k] for c, k in spots if isinstance(c[k], dict)]
        target = draw(st.sampled_from(containers))
        target[draw(st.sampled_from(OTLP_NAMES) | st.text(max_size=8))] = draw(wrong_values)
    else:
        container, key = draw(st.sampled_from(spots))
        container[key] = draw(wrong_values)
    return document


@few
@given(document=almost_valid_json(), gzipped=st.booleans(),
       content_type=st.sampled_from(JSON_CONTENT_TYPES))
def test_no_almost_valid_json_produces_a_5xx_or_changes_a_count_it_should_not(
        ingest: Ingest, document: Any, gzipped: bool, content_type: str) -> None:
    post_logs(ingest, encode(document), content_type, gzipped=gzipped)


def framed(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (built by hand: the classes refuse to nest so deep)."""
    return bytes([number << 3 | 2]) + otlp._varint(len(payload)) + payload


def deep_request(depth: int) -> tuple[bytes, bytes]:
    """One record whose body nests `depth` arrays and kvlists, in protobuf and in JSON."""
    protobuf = framed(1, b"bottom")
    document: dict[str, Any] = {"stringValue": "bottom"}
    for level in range(depth):
        if level % 2:
            protobuf = framed(5, framed(1, protobuf))
            document = {"arrayValue": {"values": [document]}}
        else:
            protobuf = framed(6, framed(1, framed(1, b"k") + framed(2, protobuf)))
            document = {"kvlistValue": {"values": [{"key": "k", "value": document}]}}
    protobuf = framed(1, framed(2, framed(2, framed(5, protobuf))))
    request = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": document}]}]}]}
    return protobuf, encode(request)


# An array level is two messages, a kvlist level three: protobuf's limit of 100 is near 38.
@hypothesis_settings(examples, max_examples=60)
@given(depth=st.integers(30, 45) | st.sampled_from([1, 10, 60, 100]), gzipped=st.booleans())
def test_records_nested_near_protobufs_depth_limit_are_read_alike_in_protobuf_and_json(
        ingest: Ingest, depth: int, gzipped: bool) -> None:
    as_protobuf, as_json = deep_request(depth)
    answers = [post_logs(ingest, as_protobuf, otlp.PROTOBUF, gzipped=gzipped, sent=1),
               post_logs(ingest, as_json, otlp.JSON, gzipped=gzipped, sent=1)]
    assert answers[0].status == answers[1].status, [a.describe() for a in answers]
