"""Migration 0008 (retention and the dedup window) on a database that has stored events: they
are kept (forever: retention applies to events settled from then on), and their keys open the
stream's first generation, so copies of them are still duplicates."""

from __future__ import annotations

import uuid

import orjson
import psycopg

from services.stack.servers import PostgresServer, RedisServer
from shared.clients import Role, opened
from shared.constants import EVENT_FIELD
from shared.entries import Entry
from shared.migrations import migrate
from shared.retention import KEPT
from shared.settings import Settings
from shared.sql import migrations

BEFORE = "0008_retention"


def _apply_up_to(url: str, last_before: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY,"
                      " applied_at timestamptz NOT NULL DEFAULT now())")
        for migration in migrations():
            if migration.version >= last_before:
                break
            with conn.transaction():
                conn.execute(migration.text.encode())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)",
                             [migration.version])


def _entry(ms: int, event_id: str) -> Entry:
    raw = orjson.dumps({"topic": "auth", "event_id": event_id, "timestamp": "2026-01-01T00:00:00Z",
                        "source": "svc", "payload": {}})
    return Entry.decode(f"{ms}-0".encode(), {EVENT_FIELD: raw})


async def test_events_stored_before_0008_are_kept_and_their_keys_remembered(
        postgres_server: PostgresServer, redis_server: RedisServer) -> None:
    url = postgres_server.url(f"before_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{url.rsplit("/", 1)[1]}"')
    _apply_up_to(url, BEFORE)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO events (stream, topic, event_id, \"timestamp\", source, payload,"
                     " stream_ms, stream_seq) SELECT 1, 'auth', 'old-' || i, now(), 'svc', '{}',"
                     " 1000 + i, 0 FROM generate_series(1, 3) AS i")
    assert migrate(url) == [m.version for m in migrations() if m.version >= BEFORE]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), min(expires_ms), max(expires_ms) FROM events"
                            ).fetchone() == (3, KEPT, KEPT)
        [(generation, keys)] = conn.execute(
            "SELECT s.generation, (SELECT count(*) FROM dedup_keys k"
            " WHERE k.generation = s.generation) FROM streams s WHERE s.name = 'events'"
        ).fetchall()
        assert keys == 3
        assert conn.execute("SELECT to_regclass(%s)", [f"dedup_keys_g{generation}"]
                            ).fetchone() != (None,)
    settings = Settings.from_env({}, database_url=url, redis_url=redis_server.url,
                                 stream_key="events")
    async with opened(settings, Role("test", pool_size=2, pool_timeout=10.0,
                                     wait_for_store=True)) as clients:
        settled = await clients.store.settle([_entry(2000, "old-1"), _entry(2001, "new")])
    assert (settled.unique_total, settled.duplicate_total) == (1, 1)
