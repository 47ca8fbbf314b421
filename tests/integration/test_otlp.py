"""POST /v1/logs (services/ingest/otlp.py): OTLP/HTTP in protobuf and JSON, gzip, the mapping of
a log record to an event, partial success, the limits, and a real OpenTelemetry SDK sending
Python `logging` records to a live ingest."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gzip
import logging
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp.test_utils import TestClient
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from redis.asyncio import Redis

from services.ingest.app import create_app
from services.ingest.server import EdgeSite, serving
from shared.constants import EVENT_FIELD
from shared.metrics import HTTP_REQUESTS
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import (
    ADMIN_KEY,
    api_client,
    counts,
    eventually,
    nothing_enqueued,
    run_until_drained,
)

Client = TestClient[Any, Any]
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
TRACE_ID = bytes(range(16))
SPAN_ID = bytes(range(8, 16))
T0 = 1_764_064_800_123_456_789  # 2025-11-25T10:00:00.123456789Z


def value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, dict):
        return AnyValue(kvlist_value={"values": pairs(v)})
    if isinstance(v, list):
        return AnyValue(array_value={"values": [value(x) for x in v]})
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    return AnyValue(string_value=v)


def pairs(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=value(v)) for k, v in attributes.items()]


def record(i: int, **fields: Any) -> LogRecord:
    base: dict[str, Any] = {
        "time_unix_nano": T0 + i, "observed_time_unix_nano": T0 + 1000 + i,
        "severity_number": 9, "severity_text": "INFO", "body": value(f"order {i} paid"),
        "attributes": pairs({"order": i, "amount": 12.5, "tags": ["a", "b"]}),
        "trace_id": TRACE_ID, "span_id": SPAN_ID, "flags": 1}
    base.update(fields)
    return LogRecord(**base)


def export_request(records: Sequence[LogRecord], **resource: Any) -> ExportLogsServiceRequest:
    attributes = {"service.name": "checkout", "service.instance.id": "pod-1",
                  "host.name": "node-a", **resource}
    attributes = {k: v for k, v in attributes.items() if v is not None}
    message = ExportLogsServiceRequest()
    resource_logs = message.resource_logs.add()
    resource_logs.resource.attributes.extend(pairs(attributes))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "shop.orders"
    scope_logs.scope.version = "1.2.0"
    scope_logs.scope.attributes.extend(pairs({"team": "payments"}))
    scope_logs.log_records.extend(records)
    return message


def as_otlp_json(message: ExportLogsServiceRequest) -> bytes:
    """OTLP's JSON: as protobuf's JSON, but trace and span ids in hex."""
    body = json_format.MessageToDict(message)
    for resource_logs in body.get("resourceLogs", []):
        for scope_logs in resource_logs.get("scopeLogs", []):
            for log_record in scope_logs.get("logRecords", []):
                for name in ("traceId", "spanId"):
                    if name in log_record:
                        log_record[name] = base64.b64decode(log_record[name]).hex()
    return orjson.dumps(body)


async def send(client: Client, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    answer = await client.post("/v1/logs", data=body, headers=headers)
    return answer.status, await answer.read()


def response_of(raw: bytes, protobuf: bool = True) -> ExportLogsServiceResponse:
    message = ExportLogsServiceResponse()
    if protobuf:
        message.ParseFromString(raw)
    else:
        json_format.Parse(raw, message)
    return message


def status_of(raw: bytes) -> status_pb2.Status:
    status = status_pb2.Status()
    status.ParseFromString(raw)
    return status


async def stream_events(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    entries = await redis.xrange(settings.stream_key)
    return [orjson.loads(fields[EVENT_FIELD]) for _, fields in entries]


async def stored(client: Client) -> list[dict[str, Any]]:
    answer = await client.get("/events", params={"limit": "1000"})
    assert answer.status == 200
    events: list[dict[str, Any]] = (await answer.json())["events"]
    return events


# -- encodings -----------------------------------------------------------------------------------

async def test_protobuf_json_and_gzip_give_the_same_events_and_a_resend_is_duplicates(
        client: Client, redis: Redis, settings: Settings, stream: Stream, store: Store,
        sql: psycopg.Connection[Any]) -> None:
    message = export_request([record(i) for i in range(3)])
    bodies = [
        (message.SerializeToString(), PROTOBUF),
        (as_otlp_json(message), JSON),
        (gzip.compress(message.SerializeToString()), {**PROTOBUF, "Content-Encoding": "gzip"}),
        (gzip.compress(as_otlp_json(message)), {**JSON, "Content-Encoding": "gzip"}),
    ]
    for body, headers in bodies:
        status, raw = await send(client, body, headers)
        assert status == 200, raw
        assert response_of(raw, headers is PROTOBUF or "x-protobuf" in headers["Content-Type"]
                           ) == ExportLogsServiceResponse()
    events = await stream_events(redis, settings)
    assert len(events) == 12
    assert events[0:3] == events[3:6] == events[6:9] == events[9:12]
    await run_until_drained(settings, stream, store)
    assert counts(sql) == (3, 9, 3)


async def test_a_json_answer_is_json_and_a_protobuf_answer_protobuf(client: Client) -> None:
    message = export_request([record(0, body=value("bad \x00"))])
    answer = await client.post("/v1/logs", data=as_otlp_json(message), headers=JSON)
    assert (answer.status, answer.content_type) == (200, "application/json")
    body = await answer.json()
    assert body["partialSuccess"]["rejectedLogRecords"] == "1"  # int64: a string in JSON
    answer = await client.post("/v1/logs", data=message.SerializeToString(), headers=PROTOBUF)
    assert (answer.status, answer.content_type) == (200, "application/x-protobuf")
    assert response_of(await answer.read()).partial_success.rejected_log_records == 1


# -- the mapping ---------------------------------------------------------------------------------

async def test_each_record_becomes_an_event_as_the_readme_says(
        client: Client, settings: Settings, stream: Stream, store: Store) -> None:
    message = export_request([
        record(0, attributes=pairs({"log.record.uid": "uid-0", "user": {"id": 7}})),
        record(1, time_unix_nano=0),
        record(2, time_unix_nano=0, observed_time_unix_nano=0,
               body=value({"msg": "kv", "raw": b"\x01\x02", "n": [1, 2.5, True]})),
    ])
    other = export_request([record(3)], **{"service.name": None, "service.instance.id": None})
    message.resource_logs.extend(other.resource_logs)
    status, raw = await send(client, message.SerializeToString(), PROTOBUF)
    assert status == 200, raw
    await run_until_drained(settings, stream, store)
    events = {e["payload"]["time_unix_nano"] + e["payload"]["observed_time_unix_nano"]: e
              for e in await stored(client)}
    assert len(events) == 4
    first = events[f"{T0}{T0 + 1000}"]
    assert first["topic"] == "checkout" and first["source"] == "pod-1"
    assert first["event_id"] == "uid-0"
    assert first["timestamp"] == "2025-11-25T10:00:00.123456Z"
    assert first["payload"] == {
        "body": "order 0 paid", "severity_number": 9, "severity_text": "INFO",
        "attributes": {"log.record.uid": "uid-0", "user": {"id": 7}},
        "trace_id": TRACE_ID.hex(), "span_id": SPAN_ID.hex(), "flags": 1,
        "time_unix_nano": str(T0), "observed_time_unix_nano": str(T0 + 1000),
        "resource": {"attributes": {"service.name": "checkout", "service.instance.id": "pod-1",
                                    "host.name": "node-a"}, "schema_url": ""},
        "scope": {"name": "shop.orders", "version": "1.2.0",
                  "attributes": {"team": "payments"}, "schema_url": ""}}
    observed = events[f"0{T0 + 1001}"]
    assert observed["timestamp"] == "2025-11-25T10:00:00.123457Z"  # observed_time_unix_nano
    assert len(observed["event_id"]) == 64  # the digest: SHA-256 in hex
    body = events["00"]["payload"]["body"]
    assert body == {"msg": "kv", "raw": "AQI=", "n": [1, 2.5, True]}
    fallback = events[f"{T0 + 3}{T0 + 1003}"]
    assert (fallback["topic"], fallback["source"]) == ("unknown_service", "node-a")


async def test_the_topic_comes_from_the_configured_attribute(
        settings: Settings, redis: Redis) -> None:
    configured = dataclasses.replace(settings, otlp_topic_attribute="deployment.environment")
    message = export_request([record(0)], **{"deployment.environment": "prod"})
    async with api_client(configured) as client:
        status, _ = await send(client, message.SerializeToString(), PROTOBUF)
    assert status == 200
    assert [e["topic"] for e in await stream_events(redis, settings)] == ["prod"]


# -- partial success and the limits --------------------------------------------------------------

async def test_invalid_records_are_rejected_alone_and_the_valid_ones_enqueued(
        client: Client, redis: Redis, settings: Settings) -> None:
    message = export_request([record(0), record(1, body=value("nul \x00 here")), record(2)])
    long_topic = export_request([record(3)], **{"service.name": "s" * 256})
    message.resource_logs.extend(long_topic.resource_logs)
    status, raw = await send(client, message.SerializeToString(), PROTOBUF)
    assert status == 200
    partial = response_of(raw).partial_success
    assert partial.rejected_log_records == 2
    assert "log record 1: /payload/body: must not contain the NUL" in partial.error_message
    assert "log record 3: /topic" in partial.error_message
    events = await stream_events(redis, settings)
    assert [e["payload"]["body"] for e in events] == ["order 0 paid", "order 2 paid"]


@pytest.mark.parametrize(("body", "headers"), [
    (b"\xff\xff\xff", PROTOBUF),
    (b"{not json", JSON),
    (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}', JSON),
    (b'{"resourceLogs": 7}', JSON),
    (b"plain bytes", {**PROTOBUF, "Content-Encoding": "gzip"}),
], ids=["bad protobuf", "bad json", "a trace id not in hex", "a wrong type", "bad gzip"])
async def test_an_undecodable_body_is_a_400_status_in_the_request_encoding(
        client: Client, redis: Redis, settings: Settings, body: bytes,
        headers: dict[str, str]) -> None:
    answer = await client.post("/v1/logs", data=body, headers=headers)
    assert answer.status == 400
    raw = await answer.read()
    if headers["Content-Type"] == PROTOBUF["Content-Type"]:
        assert answer.content_type == "application/x-protobuf"
        assert status_of(raw).code == 3
    else:
        assert answer.content_type == "application/json"
        assert set(orjson.loads(raw)) == {"code", "message"}
    assert await nothing_enqueued(redis, settings)


async def test_other_content_types_are_415(client: Client) -> None:
    status, raw = await send(client, b"x", {"Content-Type": "text/plain"})
    assert status == 415
    assert orjson.loads(raw)["message"].startswith("unsupported_media_type")


async def test_too_many_records_are_a_413(settings: Settings, redis: Redis) -> None:
    limited = dataclasses.replace(settings, max_batch_events=3)
    async with api_client(limited) as client:
        status, raw = await send(client, export_request([record(i) for i in range(4)])
                                 .SerializeToString(), PROTOBUF)
    assert status == 413
    assert status_of(raw).message.startswith("too_many_events")
    assert await nothing_enqueued(redis, settings)


def gzip_bomb(inflated: int) -> bytes:
    """`inflated` zero bytes, gzipped (about a thousandth of that), compressed chunk by chunk."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [packer.compress(chunk) for _ in range(inflated >> 20)]
    return b"".join([*parts, packer.flush()])


async def test_a_gzip_bomb_is_a_413_and_never_inflated_whole(
        client: Client, redis: Redis, settings: Settings) -> None:
    bomb = gzip_bomb(1 << 30)  # 1 GiB of zeros in about 1 MiB
    assert len(bomb) < settings.max_body_bytes
    tracemalloc.start()
    try:
        status, raw = await send(client, bomb, {**PROTOBUF, "Content-Encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413
    assert status_of(raw).message.startswith("body_too_large")
    # aiohttp inflates it chunk by chunk and stops past MAX_BODY_BYTES: tens of MiB at most
    # (buffers of the client and the server), never the gigabyte.
    assert peak < 64 * 1024 * 1024, peak
    assert await nothing_enqueued(redis, settings)


async def test_without_a_key_it_is_a_401(settings: Settings, redis: Redis) -> None:
    async with api_client(settings, key=None) as client:
        status, raw = await send(client, export_request([record(0)]).SerializeToString(),
                                 PROTOBUF)
    assert status == 401
    assert orjson.loads(raw)["error"] == "unauthorized"
    assert await nothing_enqueued(redis, settings)


# -- a real OpenTelemetry SDK --------------------------------------------------------------------

@asynccontextmanager
async def live_ingest(settings: Settings) -> AsyncIterator[EdgeSite]:
    served = dataclasses.replace(settings, ingest_host="127.0.0.1", ingest_port=0)
    async with serving(create_app(served), served) as site:
        yield site


class KeepingExporter(OTLPLogExporter):
    """The SDK's OTLP/HTTP exporter, keeping each batch it exported, to send one again as a
    client that never saw the answer would."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: list[list[ReadableLogRecord]] = []

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        self.batches.append(list(batch))
        return super().export(batch)


@contextlib.contextmanager
def otel_logging(site: EdgeSite, name: str,
                 compression: Compression = Compression.NoCompression
                 ) -> Any:
    exporter = KeepingExporter(endpoint=f"http://127.0.0.1:{site.port}/v1/logs",
                               headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                               compression=compression)
    provider = LoggerProvider(resource=Resource.create(
        {"service.name": "checkout", "service.instance.id": "pod-7"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger, provider, exporter
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


async def test_the_opentelemetry_sdk_sends_python_logging_records_through_otlp_http(
        settings: Settings, stream: Stream, store: Store, client: Client) -> None:
    async with live_ingest(settings) as site:
        with otel_logging(site, "shop.orders", Compression.Gzip) as (logger, provider, _):
            logger.info("order %s paid", 1, extra={"order_id": "o-1"})
            logger.warning("order %s late", 2)
            assert await asyncio.to_thread(provider.force_flush)
    await run_until_drained(settings, stream, store)
    events = sorted(await stored(client), key=lambda e: e["payload"]["body"])
    assert [(e["topic"], e["source"]) for e in events] == [("checkout", "pod-7")] * 2
    paid, late = events
    assert paid["payload"]["body"] == "order 1 paid"
    assert (paid["payload"]["severity_text"], paid["payload"]["severity_number"]) == ("INFO", 9)
    assert (late["payload"]["severity_text"], late["payload"]["severity_number"]) == ("WARN", 13)
    assert paid["payload"]["attributes"]["order_id"] == "o-1"
    assert paid["payload"]["scope"]["name"] == "shop.orders"
    assert paid["payload"]["resource"]["attributes"]["service.name"] == "checkout"
    assert len(paid["event_id"]) == 64 and paid["event_id"] != late["event_id"]


async def answered_503(before: float) -> bool:
    return http_answers("503") > before


def http_answers(status: str) -> float:
    return HTTP_REQUESTS.labels(route="/v1/logs", status=status)._value.get()  # type: ignore[no-any-return]


async def test_a_batch_the_sdk_sends_again_after_a_503_counts_as_duplicates(
        settings: Settings, stream: Stream, store: Store,
        sql: psycopg.Connection[Any]) -> None:
    """MAX_BACKLOG 4: a first batch of 3 is accepted, and held (no consumer yet); sent again,
    as by a client that never saw the answer, it is refused 503 while the backlog is full; the
    exporter retries after `Retry-After`; a consumer drains the backlog meanwhile, and the
    retry is accepted. The second copy counts as 3 duplicates."""
    full = dataclasses.replace(settings, max_backlog=4)
    refused = http_answers("503")
    async with live_ingest(full) as site:
        with otel_logging(site, "shop.resend") as (logger, provider, exporter):
            for i in range(3):
                logger.info("order %s paid", i)
            assert await asyncio.to_thread(provider.force_flush)
            assert [len(batch) for batch in exporter.batches] == [3]
            again = asyncio.create_task(asyncio.to_thread(exporter.export, exporter.batches[0]))
            await eventually(lambda: answered_503(refused), what="a 503 to the re-sent batch")
            await run_until_drained(settings, stream, store)
            assert await again == LogRecordExportResult.SUCCESS
    await run_until_drained(settings, stream, store)
    assert counts(sql) == (3, 3, 3)
