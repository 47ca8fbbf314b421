"""`logagg migrate`: creates the database in UTF-8, refuses one in another encoding, applies
each migration once, safe when run at once."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from services.cli import main
from services.stack.servers import PostgresServer
from shared.exceptions import DatabaseEncodingError
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
            "SELECT contype FROM pg_constraint WHERE conname = 'dedup_keys_pkey'").fetchone()
        assert constraint == ("p",)


def test_migrating_again_changes_nothing(postgres_server: PostgresServer) -> None:
    url = postgres_server.url(f"fresh_{uuid.uuid4().hex[:8]}")
    assert migrate(url) != []
    assert migrate(url) == []


def test_a_database_in_another_encoding_is_refused_before_anything_is_applied(
        postgres_server: PostgresServer) -> None:
    name = f"ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LOCALE 'C' TEMPLATE template0")
    with pytest.raises(DatabaseEncodingError, match=f"'{name}' is in the SQL_ASCII encoding"):
        migrate(postgres_server.url(name))
    with psycopg.connect(postgres_server.url(name)) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)


def test_logagg_migrate_says_why_it_refuses_a_database_in_another_encoding(
        postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    name = f"latin_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'LATIN1' LOCALE 'C' TEMPLATE template0")
    monkeypatch.setenv("DATABASE_URL", postgres_server.url(name))
    assert main(["migrate"]) == 2
    assert capsys.readouterr().err == (
        f"logagg: database '{name}' is in the LATIN1 encoding; logagg needs UTF8. Let `logagg "
        f"migrate` create the database, or create it yourself with CREATE DATABASE \"{name}\" "
        f"ENCODING 'UTF8' LOCALE 'C' TEMPLATE template0\n")


def test_migrate_creates_its_database_in_utf8_on_a_cluster_whose_default_is_sql_ascii(
        scratch: Path) -> None:
    server = PostgresServer(scratch / f"pg-ascii-{uuid.uuid4().hex[:8]}", durable=False,
                            encoding="SQL_ASCII")
    server.start()
    try:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            default = conn.execute("SELECT pg_encoding_to_char(encoding) FROM pg_database "
                                   "WHERE datname = 'template1'").fetchone()
        # A plain CREATE DATABASE would be SQL_ASCII too, where text comes back as bytes.
        assert default == (b"SQL_ASCII",)
        assert migrate(server.url("logagg")) == [version for version, _ in migrations()]
        with psycopg.connect(server.url("logagg")) as conn:
            assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
            # Text comes back as str, not as bytes: what made /stats answer 500 in SQL_ASCII.
            assert conn.execute("SELECT 'ä€'::text").fetchone() == ("ä€",)
    finally:
        server.stop()
