"""`logagg migrate`: creates the database in UTF-8, refuses one in another encoding, applies
each migration once, safe when run at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.cli import main
from services.stack.servers import PostgresServer, free_port
from shared.exceptions import DatabaseEncodingError
from shared.migrations import migrate
from shared.paths import ROOT
from shared.sql import NO_TRANSACTION, migrations


def test_migrators_running_at_once_apply_each_migration_exactly_once(
        postgres_server: PostgresServer) -> None:
    url = postgres_server.url(f"fresh_{uuid.uuid4().hex[:8]}")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: migrate(url), range(4)))
    versions = [m.version for m in migrations()]
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


def test_logagg_migrate_says_in_one_line_that_postgresql_did_not_answer(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/logagg")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("logagg: cannot migrate: PostgreSQL did not answer: connection ")
    assert "Traceback" not in err


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
        assert migrate(server.url("logagg")) == [m.version for m in migrations()]
        with psycopg.connect(server.url("logagg")) as conn:
            assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
            # Text comes back as str, not as bytes: what made /stats answer 500 in SQL_ASCII.
            assert conn.execute("SELECT 'ä€'::text").fetchone() == ("ä€",)
    finally:
        server.stop()


# A migration outside a transaction, in a folder of its own (sql/ is not for test files).
ITEMS = "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL);\n"
BY_NAME = (f"{NO_TRANSACTION}\n-- built while the table takes writes\n"
           "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_by_name ON items (name);\n")
UNIQUE_NAME = (f"{NO_TRANSACTION}\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "
               "items_unique_name ON items (name);\n")


def fresh(postgres_server: PostgresServer) -> str:
    return postgres_server.url(f"fresh_{uuid.uuid4().hex[:8]}")


def recorded(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    return [row[0] for row in rows]


def index_valid(url: str, index: str) -> bool | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                           [index]).fetchone()
    return None if row is None else bool(row[0])


def items_then_a_concurrent_build(postgres_server: PostgresServer, tmp_path: Path) -> str:
    """A database with `items` migrated, and a build of `items_by_name` still to apply."""
    url = fresh(postgres_server)
    (tmp_path / "0001_items.sql").write_text(ITEMS)
    assert migrate(url, directory=tmp_path) == ["0001_items"]
    (tmp_path / "0002_items_by_name.sql").write_text(BY_NAME)
    return url


def backend(watch: psycopg.Connection[Any], condition: str) -> Callable[[], bool]:
    """Whether another backend of this database shows in `pg_stat_activity` so."""
    return lambda: watch.execute(
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        f"AND pid <> pg_backend_pid() AND {condition}").fetchone() is not None


def poll(check: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def test_a_migration_outside_a_transaction_builds_its_index_concurrently_and_is_recorded_once(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = fresh(postgres_server)
    (tmp_path / "0001_items.sql").write_text(ITEMS)
    (tmp_path / "0002_items_by_name.sql").write_text(BY_NAME)
    # CREATE INDEX CONCURRENTLY fails in a transaction block: that it passes shows it ran outside.
    assert migrate(url, directory=tmp_path) == ["0001_items", "0002_items_by_name"]
    assert migrate(url, directory=tmp_path) == []
    assert recorded(url) == ["0001_items", "0002_items_by_name"]
    assert index_valid(url, "items_by_name") is True


def test_a_migration_outside_a_transaction_that_fails_half_way_is_unrecorded_and_completes_later(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = fresh(postgres_server)
    (tmp_path / "0001_items.sql").write_text(ITEMS)
    (tmp_path / "0002_items_by_name.sql").write_text(
        BY_NAME + "SELECT no_such_function();\n")
    with pytest.raises(psycopg.errors.UndefinedFunction):
        migrate(url, directory=tmp_path)
    # The first statement stays applied (autocommit), the file unrecorded.
    assert recorded(url) == ["0001_items"]
    assert index_valid(url, "items_by_name") is True
    (tmp_path / "0002_items_by_name.sql").write_text(
        BY_NAME + "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_by_id ON items (id, name);\n")
    assert migrate(url, directory=tmp_path) == ["0002_items_by_name"]
    assert recorded(url) == ["0001_items", "0002_items_by_name"]
    assert index_valid(url, "items_by_name") is True
    assert index_valid(url, "items_by_id") is True


def test_an_invalid_index_left_by_a_failed_concurrent_build_is_dropped_and_built_again(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = fresh(postgres_server)
    (tmp_path / "0001_items.sql").write_text(
        ITEMS + "INSERT INTO items VALUES (1, 'a'), (2, 'a');\n")
    (tmp_path / "0002_items_unique_name.sql").write_text(UNIQUE_NAME)
    # The build fails on the duplicate half way, as a crash or a cancel would: PostgreSQL keeps
    # the index, INVALID, and IF NOT EXISTS alone would skip it from then on.
    with pytest.raises(psycopg.errors.UniqueViolation):
        migrate(url, directory=tmp_path)
    assert recorded(url) == ["0001_items"]
    assert index_valid(url, "items_unique_name") is False
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM items WHERE id = 2")
    assert migrate(url, directory=tmp_path) == ["0002_items_unique_name"]
    assert recorded(url) == ["0001_items", "0002_items_unique_name"]
    assert index_valid(url, "items_unique_name") is True
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO items VALUES (3, 'a')")


def test_a_migrator_waiting_for_the_lock_neither_applies_a_concurrent_build_again_nor_deadlocks(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = items_then_a_concurrent_build(postgres_server, tmp_path)
    with psycopg.connect(url) as blocker, psycopg.connect(url, autocommit=True) as watch, \
            ThreadPoolExecutor(max_workers=2) as pool:
        # Hold the first migrator inside its build: CREATE INDEX CONCURRENTLY waits for this lock.
        blocker.execute("LOCK TABLE items IN SHARE UPDATE EXCLUSIVE MODE")

        first = pool.submit(migrate, url, directory=tmp_path)
        poll(backend(watch, "query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'"))
        second = pool.submit(migrate, url, directory=tmp_path)
        poll(backend(watch, "query LIKE '%advisory_lock%'"))
        blocker.commit()
        # The build then waits for every older snapshot: a migrator blocked in pg_advisory_lock
        # would hold one and deadlock with it.
        results: list[Any] = [first.result(timeout=60), second.result(timeout=60)]
    assert results == [["0002_items_by_name"], []]
    assert recorded(url) == ["0001_items", "0002_items_by_name"]
    assert index_valid(url, "items_by_name") is True


def test_a_migrator_killed_in_the_middle_of_a_concurrent_build_leaves_it_to_be_built_again(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = items_then_a_concurrent_build(postgres_server, tmp_path)
    code = ("from pathlib import Path; from shared.migrations import migrate; "
            f"migrate({url!r}, directory=Path({str(tmp_path)!r}))")
    # A server that notices a vanished client ends its backend, as a dropped connection would.
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PGOPTIONS": "-c client_connection_check_interval=50"}
    with psycopg.connect(url) as writer, psycopg.connect(url, autocommit=True) as watch:
        # An open write: the build has put its index in the catalog (INVALID) and waits for it.
        writer.execute("INSERT INTO items VALUES (1, 'a')")
        migrator = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            waiting = backend(watch, "query LIKE 'CREATE INDEX CONCURRENTLY%' "
                                     "AND wait_event = 'virtualxid'")

            def building() -> bool:
                assert migrator.poll() is None, "the migrator ended before its build began"
                return waiting()
            poll(building)
            migrator.send_signal(signal.SIGKILL)
        finally:
            migrator.kill()  # SIGKILL too: no migrator outlives a failed poll
            migrator.wait(timeout=30)
        build = backend(watch, "query LIKE 'CREATE INDEX CONCURRENTLY%'")
        poll(lambda: not build())
        writer.commit()
    assert recorded(url) == ["0001_items"]
    assert index_valid(url, "items_by_name") is False
    assert migrate(url, directory=tmp_path) == ["0002_items_by_name"]
    assert recorded(url) == ["0001_items", "0002_items_by_name"]
    assert index_valid(url, "items_by_name") is True
