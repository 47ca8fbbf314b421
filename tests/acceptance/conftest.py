"""Acceptance fixtures: the whole stack as real processes (`LocalStack`, the code behind
`logagg up`), over its own Redis and PostgreSQL in a folder of its own, for each test."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis

from services.stack.local import LocalStack
from services.stack.servers import free_port
from shared.settings import Settings


def local_stack(scratch: Path, **options: Any) -> LocalStack:
    settings = Settings.from_env({}, ingest_port=free_port(), metrics_port=0,
                                 claim_idle_ms=1000, batch_size=200)
    folder = Path(tempfile.mkdtemp(dir=scratch))
    return LocalStack(settings, folder, redis_port=free_port(), postgres_port=free_port(),
                      durable=False, **options)


@pytest.fixture
def stack(scratch: Path) -> Iterator[LocalStack]:
    with local_stack(scratch) as running:
        yield running


def publish(stack: LocalStack, *args: str) -> dict[str, Any]:
    """Run `logagg publish` against the stack; return its JSON report."""
    command = [sys.executable, "-m", "services.cli", "publish", "--url", stack.base_url,
               "--json", *args]
    result = subprocess.run(command, capture_output=True, check=True, timeout=300)
    report: dict[str, Any] = orjson.loads(result.stdout)
    return report


_publishers: list[subprocess.Popen[bytes]] = []


def start_publish(stack: LocalStack, *args: str) -> subprocess.Popen[bytes]:
    """`logagg publish` in the background; reaped after the test even if the test failed."""
    command = [sys.executable, "-m", "services.cli", "publish", "--url", stack.base_url,
               "--json", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _publishers.append(process)
    return process


@pytest.fixture(autouse=True)
def _reap_publishers() -> Iterator[None]:
    yield
    while _publishers:
        process = _publishers.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()  # closes its pipes


def logged_actions(stack: LocalStack, process: str) -> list[str]:
    """The `action` of every line a process logged (JSON lines: its stderr is a file)."""
    lines = (stack.data_dir / "logs" / f"{process}.log").read_text().splitlines()
    return [orjson.loads(line).get("action", "") for line in lines if line.startswith("{")]


def held_by(redis: Redis, stack: LocalStack, process: str) -> int:
    """Entries delivered to that consumer process and not acked yet."""
    name = stack.consumer_names[process]
    return len(redis.xpending_range(stack.settings.stream_key, stack.settings.consumer_group,
                                    min="-", max="+", count=1000, consumername=name))
