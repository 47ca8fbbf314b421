"""Fixtures every test layer shares: real Redis and PostgreSQL servers started for the session.

They run through the same code as `logagg up` (services/stack/servers.py), from the same
binaries: the machine's own, or pip's where it has none (`LOGAGG_SERVERS=pip` forces those), on
free ports, over a temporary folder; never the machine's own long-running services. The header
of every run says which servers it started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack.servers import PostgresServer, RedisServer, describe, find_postgres, find_redis
from shared.exceptions import LogaggError


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return describe(find_redis(), find_postgres())
    except LogaggError as error:  # the fixtures below fail with the same message
        return f"servers: {error}"


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    """A folder that the `postgres` user can enter too (PostgreSQL runs as it when we are root)."""
    folder = Path(tempfile.mkdtemp(prefix="logagg-tests-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(scratch: Path) -> Iterator[RedisServer]:
    # appendfsync `always`, as deployed (SPEC §1), on purpose rather than by default: unlike
    # PostgreSQL's fsync below, it costs the tests nothing measurable (the integration suite
    # took 159 s with it and 164 s with everysec, back to back on the same machine), so there is
    # no reason to test a Redis other than the one users run.
    server = RedisServer(scratch / "redis", appendfsync="always")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(scratch: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(scratch / "postgres", durable=False)
    server.start()
    yield server
    server.stop()
