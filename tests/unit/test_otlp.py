"""services/ingest/otlp.py without a server: OTLP's JSON read into the same messages as
protobuf, and no body, however broken, fails the decoder other than with a 400."""

from __future__ import annotations

import base64
import math

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


def same_events(decoded: otlp.Decoded) -> None:
    """The events of a JSON request are the same, byte for byte, with the hints of its JSON
    as read from the message alone (but for the time ingest read a record without one)."""
    settings = Settings.from_env({})
    hinted = otlp.records(decoded.message, settings, decoded.hints)
    plain = otlp.records(decoded.message, settings)
    assert (hinted.rejected, hinted.problems) == (plain.rejected, plain.problems)
    assert ([orjson.dumps({**e, "timestamp": None}) for e in hinted.events]
            == [orjson.dumps({**e, "timestamp": None}) for e in plain.events])


@given(JSON_VALUES)
def test_any_json_is_a_request_or_a_400(body: object) -> None:
    try:
        decoded = otlp.read(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), otlp.JSON)
    except ApiError as error:
        assert error.status == 400
        return
    same_events(decoded)


PLAIN_VALUES = st.one_of(
    st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=5),
    st.dictionaries(st.sampled_from(["stringValue", "intValue", "boolValue", "x"]),
                    st.one_of(st.text(max_size=3),
                              st.sampled_from(["42", "-1", "0042", "x", str(2**63), str(2**64)]),
                              st.integers(-3, 3), st.booleans(), st.none()), max_size=2))


@given(st.lists(st.one_of(
    st.dictionaries(st.sampled_from(["key", "value", "x"]),
                    st.one_of(st.sampled_from(["a", "b", "log.record.uid"]), PLAIN_VALUES),
                    max_size=3),
    st.fixed_dictionaries({"key": st.sampled_from(["a", "b", "log.record.uid"]),
                           "value": PLAIN_VALUES})), max_size=4), PLAIN_VALUES)
def test_the_hints_of_json_change_no_event(attributes: list[object], body: object) -> None:
    """Attributes and bodies of strings and integers, the shapes the hints take, and their
    neighbours: given twice, empty, of other types, with unknown fields."""
    record = {"attributes": attributes, "body": body, "timeUnixNano": "1"}
    request = {"resourceLogs": [{"scopeLogs": [{"logRecords": [record, {"body": body}]}]}]}
    try:
        decoded = otlp.read(orjson.dumps(request), otlp.JSON)
    except ApiError as error:
        assert error.status == 400
        return
    assert decoded.hints is not None
    same_events(decoded)


def test_the_hints_of_json_are_taken_where_plain() -> None:
    body = otlp_json(every_kind())
    record = body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]  # type: ignore[index]
    plain = {**record, "body": {"stringValue": "paid"}, "attributes": [
        {"key": "a", "value": {"stringValue": "x"}}, {"key": "n", "value": {"intValue": "42"}},
        {"key": "a", "value": {"stringValue": "y"}}]}
    body["resourceLogs"][0]["scopeLogs"][0]["logRecords"].append(plain)  # type: ignore[index]
    decoded = otlp.read(orjson.dumps(body), otlp.JSON)
    assert decoded.hints == [(None, otlp.UNREAD), ({"a": "y", "n": 42}, "paid")]
    same_events(decoded)


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
