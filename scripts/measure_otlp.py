"""Measure ingest's CPU per record on POST /v1/logs (protobuf and JSON) against per event on
POST /publish, in the same run (issue 13: at most 2x /publish).

    PYTHONPATH=. .venv/bin/python scripts/measure_otlp.py [--requests 300] [--batch 100]

Starts Redis and PostgreSQL on free ports in a temporary folder and `logagg ingest` as a
process of its own (AUTH=off, MAX_BACKLOG=0, no consumer), then sends, in rounds that take the
three kinds of request in turn, `--requests` requests of `--batch` records or events each, one
at a time, and reads the ingest process's CPU time (user + system, /proc/<pid>/stat) before and
after each, and the wall time. Prints the median CPU microseconds per record of each kind
across rounds, their ratios to /publish, and the records per second accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from scripts.measure_edge import servers, settings_for
from services.bench.probes import cpu_seconds
from services.stack.servers import free_port


def otlp_request(batch: int, round_: int) -> ExportLogsServiceRequest:
    """`batch` records as an SDK sends them: a body, a severity, a few attributes, ids."""
    message = ExportLogsServiceRequest()
    resource_logs = message.resource_logs.add()
    for key, value in {"service.name": "checkout", "service.instance.id": "pod-7",
                       "host.name": "node-a", "telemetry.sdk.language": "python"}.items():
        resource_logs.resource.attributes.add(key=key).value.string_value = value
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "shop.orders"
    now = time.time_ns()
    for i in range(batch):
        record = scope_logs.log_records.add(
            time_unix_nano=now + i, observed_time_unix_nano=now + i, severity_number=9,
            severity_text="INFO", trace_id=os.urandom(16), span_id=os.urandom(8), flags=1)
        record.body.string_value = f"order {round_}-{i} paid by user 4711"
        record.attributes.add(key="code.function").value.string_value = "pay"
        record.attributes.add(key="code.lineno").value.int_value = 42
        record.attributes.add(key="order_id").value.string_value = f"o-{round_}-{i}"
    return message


def otlp_json(message: ExportLogsServiceRequest) -> bytes:
    body: dict[str, Any] = json_format.MessageToDict(message)
    for record in body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]:
        for name in ("traceId", "spanId"):
            record[name] = __import__("base64").b64decode(record[name]).hex()
    return orjson.dumps(body)


def publish_body(batch: int, round_: int) -> bytes:
    return orjson.dumps([{
        "topic": "checkout", "event_id": f"e-{round_}-{i}-{time.time_ns()}",
        "timestamp": "2026-11-25T10:00:00.123456Z", "source": "pod-7",
        "payload": {"body": f"order {round_}-{i} paid by user 4711", "severity_number": 9,
                    "severity_text": "INFO", "attributes": {"code.function": "pay",
                                                            "code.lineno": 42,
                                                            "order_id": f"o-{round_}-{i}"},
                    "trace_id": os.urandom(16).hex(), "span_id": os.urandom(8).hex()}}
        for i in range(batch)])


async def run(url: str, pid: int, args: argparse.Namespace
              ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    kinds = {
        "/publish": ("/publish", "application/json",
                     lambda r: [publish_body(args.batch, r * 10_000 + n)
                                for n in range(args.requests)]),
        "/v1/logs protobuf": ("/v1/logs", "application/x-protobuf",
                              lambda r: [otlp_request(args.batch, r).SerializeToString()
                                         for _ in range(args.requests)]),
        "/v1/logs json": ("/v1/logs", "application/json",
                          lambda r: [otlp_json(otlp_request(args.batch, r))
                                     for _ in range(args.requests)]),
    }
    per_record: dict[str, list[float]] = {kind: [] for kind in kinds}
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    async with aiohttp.ClientSession() as session:
        for round_ in range(args.rounds):
            for kind, (path, content_type, make) in kinds.items():
                bodies = make(round_)  # built before the clock starts
                before, started = cpu_seconds(pid), time.perf_counter()
                for body in bodies:
                    async with session.post(url + path, data=body,
                                            headers={"Content-Type": content_type}) as answer:
                        await answer.read()
                        assert answer.status in (200, 202), (kind, answer.status)
                spent, took = cpu_seconds(pid) - before, time.perf_counter() - started
                per_record[kind].append(spent / (args.requests * args.batch) * 1e6)
                rates[kind].append(args.requests * args.batch / took)
    return per_record, rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with servers() as (redis, postgres):
        port = free_port()
        settings = settings_for(redis, postgres, auth="off", max_backlog=0,
                                ingest_host="127.0.0.1", ingest_port=port, log_level="WARNING")
        ingest = subprocess.Popen([sys.executable, "-m", "services.cli", "ingest"],
                                  env={**os.environ, **settings.to_env()})
        try:
            asyncio.run(wait_ready(f"http://127.0.0.1:{port}"))
            figures, rates = asyncio.run(run(f"http://127.0.0.1:{port}", ingest.pid, args))
        finally:
            ingest.terminate()
            ingest.wait(15)
    base = statistics.median(figures["/publish"])
    print(f"{args.rounds} rounds x {args.requests} requests x {args.batch} records; "
          f"ingest CPU microseconds per record (median, ratio to /publish; all rounds); "
          f"records/s accepted by one client sending one request at a time (median)")
    for kind, values in figures.items():
        median = statistics.median(values)
        print(f"{kind:20} {median:7.1f} us  x{median / base:4.2f}  "
              f"{' '.join(f'{v:.1f}' for v in values)}  {statistics.median(rates[kind]):8,.0f}/s")


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(url + "/healthz") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit("ingest did not start")


if __name__ == "__main__":
    main()
