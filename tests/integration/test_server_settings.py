"""The servers logagg starts run with its settings: a Redis that never evicts, and a PostgreSQL
sized for growing history (services/stack/servers.py), durable unless a test cluster says not."""

from __future__ import annotations

from pathlib import Path

import psycopg
import redis

from services.stack.servers import (
    MAXMEMORY_POLICY,
    PostgresServer,
    RedisServer,
    machine_memory,
    postgres_tuning,
    shared_buffers_bytes,
)

GiB = 1024 ** 3


def test_the_started_redis_never_evicts(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    try:
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert MAXMEMORY_POLICY == "noeviction"
    finally:
        client.close()


def test_the_started_postgresql_runs_with_logagg_s_settings(
        postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.url()) as conn:
        def show(name: str) -> str:
            return str((conn.execute(f"SHOW {name}").fetchone() or [""])[0])

        assert show("max_wal_size") == "8GB"
        assert show("checkpoint_timeout") == "15min"
        assert show("wal_compression") in {"lz4", "on", "pglz"}  # 18 shows on as pglz
        assert show("autovacuum_vacuum_insert_scale_factor") == "0.05"
        buffers = int(str((conn.execute(
            "SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'shared_buffers'"
        ).fetchone() or [0])[0]))
    assert buffers == shared_buffers_bytes(machine_memory())


def test_a_durable_postgresql_keeps_fsync_and_full_page_writes_on(scratch: Path) -> None:
    server = PostgresServer(scratch / "durable")
    server.start()
    try:
        with psycopg.connect(server.url()) as conn:
            assert [conn.execute(f"SHOW {name}").fetchone() for name in
                    ("fsync", "full_page_writes")] == [("on",), ("on",)]
    finally:
        server.stop()


def test_shared_buffers_is_a_quarter_of_memory_between_128_mb_and_2_gib() -> None:
    assert shared_buffers_bytes(4 * GiB) == 1 * GiB
    assert shared_buffers_bytes(64 * GiB) == 2 * GiB
    assert shared_buffers_bytes(256 * 1024 ** 2) == 128 * 1024 ** 2
    assert postgres_tuning("on", 4 * GiB)["shared_buffers"] == "1048576kB"
