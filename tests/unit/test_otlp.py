"""services/ingest/otlp.py without a server: OTLP's JSON read into the same messages as
protobuf, and no body, however broken, fails the decoder other than with a 400."""

from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from services.ingest import otlp
from services.ingest.errors import ApiError
from shared.settings import Settings


def every_kind() -> ExportLogsServiceRequest:
    message = ExportLogsServiceRequest()
    resource_logs = message.resource_logs.add(schema_url="https://opentelemetry.io/schemas/1")
    resource_logs.resource.attributes.add(key="service.name").value.string_value = "checkout"
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "s"
    record = scope_logs.log_records.add(
        time_unix_nano=2**63 + 5, observed_time_unix_nano=1, severity_number=17,
        severity_text="ERROR", trace_id=bytes(range(16)), span_id=bytes(8), flags=257,
        dropped_attributes_count=2, event_name="checkout.failed")
    record.body.kvlist_value.values.add(key="raw").value.bytes_value = b"\x00\xff"
    values = record.attributes.add(key="values").value.array_value.values
    values.add().int_value = -(2**63)
    values.add().double_value = math.inf
    values.add().double_value = 0.25
    values.add().bool_value = True
    values.add()  # an empty value
    return message


def otlp_json(message: ExportLogsServiceRequest) -> dict[str, object]:
    body = json_format.MessageToDict(message)
    record = body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    for name in ("traceId", "spanId"):
        record[name] = base64.b64decode(record[name]).hex()
    return body


def test_otlp_json_reads_into_the_message_protobuf_gives() -> None:
    message = every_kind()
    body = otlp_json(message)
    assert otlp.decode(orjson.dumps(body), otlp.JSON) == message
    assert otlp.decode(message.SerializeToString(), otlp.PROTOBUF) == message


def test_otlp_json_takes_enum_names_proto_field_names_and_ignores_unknown_fields() -> None:
    body = otlp_json(every_kind())
    record = body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]  # type: ignore[index]
    record["severity_number"] = "SEVERITY_NUMBER_ERROR"
    del record["severityNumber"]
    record["somethingNew"] = {"x": 1}
    assert otlp.decode(orjson.dumps(body), otlp.JSON) == every_kind()


def test_the_payload_keeps_every_value() -> None:
    found = otlp.records(every_kind(), Settings.from_env({}))
    assert found.rejected == 0
    payload = found.events[0]["payload"]
    assert payload["body"] == {"raw": "AP8="}
    assert payload["attributes"] == {"values": [-(2**63), "Infinity", 0.25, True, None]}
    assert (payload["event_name"], payload["dropped_attributes_count"]) == ("checkout.failed", 2)
    assert payload["time_unix_nano"] == str(2**63 + 5)
    assert found.events[0]["timestamp"].startswith("2262-04-11T23:47:16")


@pytest.mark.parametrize("body", [b"", b"{}", b'{"resourceLogs": []}'])
def test_an_empty_request_has_no_records(body: bytes) -> None:
    media = otlp.PROTOBUF if body == b"" else otlp.JSON
    assert otlp.count(otlp.decode(body, media)) == 0


VALID = every_kind().SerializeToString()


@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda cut, flip: bytes(b ^ (0xFF if i == flip else 0)
                                                   for i, b in enumerate(VALID[:cut])),
                           st.integers(0, len(VALID)), st.integers(0, len(VALID)))))
def test_any_bytes_are_a_request_or_a_400_in_protobuf(body: bytes) -> None:
    try:
        message = otlp.decode(body, otlp.PROTOBUF)
    except ApiError as error:
        assert error.status == 400
        return
    otlp.records(message, Settings.from_env({}))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["resourceLogs", "scopeLogs", "logRecords", "body", "attributes",
                         "key", "value", "stringValue", "intValue", "traceId", "kvlistValue",
                         "values", "arrayValue", "bytesValue", "severityNumber", "x"]),
        inner, max_size=4),
    max_leaves=30)


def same_events(body: bytes) -> None:
    """The events of a JSON request, its plain records read straight from the JSON
    (`_plain_record`), are the same, byte for byte, as those of its messages built the general
    way, and as those of the same messages sent in protobuf (but for the time ingest read a
    record without one); a plain record's serialization is protobuf's of its message."""
    settings = Settings.from_env({})
    decoded = otlp.read(body, otlp.JSON)
    message = otlp.decode(body, otlp.JSON)
    assert decoded.hints is not None
    built = [record for resource in message.resource_logs for scope in resource.scope_logs
             for record in scope.log_records]
    assert len(built) == len(decoded.hints) == otlp.count(decoded.message)
    for record, hint in zip(built, decoded.hints, strict=True):
        if hint is not None:
            assert hint.serialized == record.SerializeToString(deterministic=True)
            assert orjson.dumps(hint.payload) == orjson.dumps(otlp.record_json(record))
    as_protobuf = otlp.read(message.SerializeToString(), otlp.PROTOBUF)
    assert as_protobuf.message == message
    found = [otlp.records(decoded.message, settings, decoded.hints),
             otlp.records(message, settings), otlp.records(as_protobuf.message, settings)]
    assert len({(f.rejected, tuple(f.problems)) for f in found}) == 1
    assert len({tuple(orjson.dumps(untimed(e)) for e in f.events) for f in found}) == 1


def untimed(event: dict[str, Any]) -> dict[str, Any]:
    """The event, its timestamp left out if ingest took it (the record had no time)."""
    payload = event["payload"]
    if payload["time_unix_nano"] == payload["observed_time_unix_nano"] == "0":
        return {**event, "timestamp": None}
    return event


@given(JSON_VALUES)
def test_any_json_is_a_request_or_a_400(body: object) -> None:
    try:
        decoded = otlp.read(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), otlp.JSON)
    except ApiError as error:
        assert error.status == 400
        return
    assert decoded.hints is not None
    same_events(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))


PLAIN_VALUES = st.one_of(
    st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=5),
    st.dictionaries(st.sampled_from(["stringValue", "intValue", "boolValue", "doubleValue",
                                     "string_value", "x"]),
                    st.one_of(st.text(max_size=3),
                              st.sampled_from(["42", "-1", "0042", "x", "", "٣", str(2**63),
                                               str(2**64), "NaN"]),
                              st.integers(-(2**63), 2**64 - 1), st.booleans(), st.none(),
                              st.floats()), max_size=2))
ATTRIBUTES = st.lists(st.one_of(
    st.dictionaries(st.sampled_from(["key", "value", "x"]),
                    st.one_of(st.sampled_from(["a", "", "é", "log.record.uid"]), PLAIN_VALUES),
                    max_size=3),
    st.fixed_dictionaries({"key": st.sampled_from(["a", "b", "", "ключ", "log.record.uid"]),
                           "value": PLAIN_VALUES})), max_size=4)
UNSIGNED = st.one_of(st.none(), st.integers(-1, 2**64 - 1), st.sampled_from(
    ["", "0", "00", "7", "0042", "-1", "1e3", "٣", str(2**32 - 1), str(2**32), str(2**64 - 1),
     str(2**64)]), st.booleans(), st.floats(0, 10))
HEX = st.one_of(st.none(), st.integers(0, 3), st.binary(max_size=17).map(bytes.hex),
                st.sampled_from(["", "0", "AbCd", "ab cd", "zz", "00" * 16]))
TEXT = st.one_of(st.none(), st.text(max_size=5), st.integers(0, 1), st.booleans())
# A record's fields, by their JSON names mostly: the plain records and their neighbours.
RECORD_FIELDS = {
    "timeUnixNano": UNSIGNED, "observedTimeUnixNano": UNSIGNED, "flags": UNSIGNED,
    "droppedAttributesCount": UNSIGNED, "traceId": HEX, "spanId": HEX, "severityText": TEXT,
    "eventName": TEXT, "body": PLAIN_VALUES, "attributes": ATTRIBUTES,
    "severityNumber": st.one_of(st.none(), st.integers(-1, 2**31), st.booleans(),
                                st.sampled_from(["SEVERITY_NUMBER_WARN", "WARN", "9"])),
    "time_unix_nano": UNSIGNED, "trace_id": HEX, "somethingNew": TEXT}


@given(st.lists(st.dictionaries(st.sampled_from(sorted(RECORD_FIELDS)), st.none(), max_size=12)
                .flatmap(lambda names: st.fixed_dictionaries(
                    {name: RECORD_FIELDS[name] for name in names})), max_size=3))
def test_plain_records_read_from_json_are_what_protobuf_gives(records: list[object]) -> None:
    """Records of plain values (`_plain_record`) and their neighbours: every field null, absent,
    of its type in and out of range, of another type; values given twice, empty; names of
    fields by their own name, unknown. Read straight from the JSON, each is the event, event
    id and serialization of its message built the general way, and of protobuf's."""
    request = {"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}
    try:
        otlp.decode(orjson.dumps(request), otlp.JSON)
    except ApiError as error:
        assert error.status == 400
        with pytest.raises(ApiError):  # what the general way refuses is refused
            otlp.read(orjson.dumps(request), otlp.JSON)
        return
    same_events(orjson.dumps(request))


def test_plain_records_are_read_from_json_the_others_built() -> None:
    body = otlp_json(every_kind())
    record = body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]  # type: ignore[index]
    plain = {**record, "body": {"stringValue": "paid"}, "attributes": [
        {"key": "a", "value": {"stringValue": "x"}}, {"key": "n", "value": {"intValue": "42"}},
        {"key": "a", "value": {"stringValue": "y"}}, {"key": "d", "value": {"doubleValue": 0.5}},
        {"key": "b", "value": {"boolValue": False}}]}
    snake = {"time_unix_nano": "1", "body": {"stringValue": "paid"}}
    body["resourceLogs"][0]["scopeLogs"][0]["logRecords"].extend(  # type: ignore[index]
        [plain, snake, {}])
    decoded = otlp.read(orjson.dumps(body), otlp.JSON)
    assert decoded.hints is not None
    assert [hint is not None for hint in decoded.hints] == [False, True, False, True]
    assert decoded.hints[1].payload["attributes"] == {"a": "y", "n": 42, "d": 0.5, "b": False}
    same_events(orjson.dumps(body))


@pytest.mark.parametrize("levels", [30, 31, 32, 46, 47, 48, 49, 60])
@pytest.mark.parametrize("container", ["kvlist", "array"])
def test_json_nested_past_protobufs_depth_is_a_400_never_a_failure_later(
        levels: int, container: str) -> None:
    """Protobuf's parser refuses messages nested deeper than 100; the messages built from JSON
    are held to the same, else the record's digest (its serialization) would fail: a 500."""
    value: dict[str, object] = {"stringValue": "x"}
    for _ in range(levels):
        value = ({"kvlistValue": {"values": [{"key": "k", "value": value}]}}
                 if container == "kvlist" else {"arrayValue": {"values": [value]}})
    body = orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": value}]}]}]})
    try:
        message = otlp.decode(body, otlp.JSON)
    except ApiError as error:
        assert error.status == 400
        return
    assert otlp.decode(message.SerializeToString(), otlp.PROTOBUF) == message
    otlp.records(message, Settings.from_env({}))
