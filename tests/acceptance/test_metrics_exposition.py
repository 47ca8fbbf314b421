"""Every `/metrics` exposition passes `promtool check metrics`, and carries the metrics the
dashboards and alerts are built on."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack.local import LocalStack
from services.stack.servers import free_port
from tests.acceptance.conftest import local_stack, publish


@pytest.fixture
def stack_with_metrics(scratch: Path) -> Iterator[LocalStack]:
    stack = local_stack(scratch, consumers=1)
    stack.settings = dataclasses.replace(stack.settings, metrics_port=free_port())
    with stack:
        yield stack


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        return str(answer.read().decode())


def promtool_check(exposition: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    result = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(),
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_ingest_and_consumer_expositions_pass_promtool(stack_with_metrics: LocalStack) -> None:
    stack = stack_with_metrics
    publish(stack, "--events", "2000", "--duplicates", "0.3")
    stack.wait_drained(timeout_s=60)

    ingest = scrape(f"{stack.base_url}/metrics")
    promtool_check(ingest)
    for name in ("logagg_http_requests_total", "logagg_events_accepted_total",
                 "logagg_publish_seconds_bucket", "logagg_stream_unacked_entries",
                 "logagg_stream_lag_entries", "logagg_oldest_unacked_age_seconds"):
        assert name in ingest

    consumer = scrape(f"http://127.0.0.1:{stack.settings.metrics_port}/metrics")
    promtool_check(consumer)
    for name in ('logagg_events_processed_total{result="unique"}',
                 'logagg_events_processed_total{result="duplicate"}',
                 "logagg_batch_seconds_bucket", "logagg_batch_entries_bucket"):
        assert name in consumer
