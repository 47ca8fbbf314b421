"""`logagg migrate`: creates the database, applies each migration once, safe when run at once."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg

from services.stack.servers import PostgresServer
from shared.migrations import migrate
from shared.sql import migrations


def test_migrators_running_at_once_apply_each_migration_exactly_once(
        postgres_server: PostgresServer) -> None:
    url = postgres_server.url(f"fresh_{uuid.uuid4().hex[:8]}")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: migrate(url), range(4)))
    versions = [version for version, _ in migrations()]
    assert sorted(v for applied in results for v in applied) == versions
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == versions
        constraint = conn.execute(
            "SELECT contype FROM pg_constraint WHERE conname = 'events_dedup_key'").fetchone()
        assert constraint == ("p",)


def test_migrating_again_changes_nothing(postgres_server: PostgresServer) -> None:
    url = postgres_server.url(f"fresh_{uuid.uuid4().hex[:8]}")
    assert migrate(url) != []
    assert migrate(url) == []
