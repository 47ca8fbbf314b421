"""Named queries and migrations, through `shared.sql`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import sql
from shared.exceptions import MigrationError
from shared.paths import ROOT, SQL_DIR


def _names_used_by_the_store() -> set[str]:
    """The quoted query names in shared/store.py: inside `self._sql[...]`, or handed to
    `self._letters(...)`, `self._exclusively(...)` or `self._running(...)`, which look their
    first argument up."""
    source = (ROOT / "shared" / "store.py").read_text()
    expressions = re.findall(r"self\._sql\[([^\]]*)\]", source)
    expressions += re.findall(r"self\._(?:letters|exclusively|running)\(([^,)]*)[,)]", source)
    return {name for expression in expressions
            for name in re.findall(r"""["'](\w+)["']""", expression)}


STORE_QUERIES = _names_used_by_the_store()


def test_parse_splits_named_blocks_in_order() -> None:
    text = "-- name: first\nSELECT 1;\n\n-- name: second\nSELECT 2;\n"
    assert sql.parse(text) == {"first": "SELECT 1", "second": "SELECT 2"}
    assert list(sql.parse(text)) == ["first", "second"]


def test_parse_keeps_a_multi_line_query_whole() -> None:
    text = "-- name: page\nSELECT a,\n       b\nFROM t\nWHERE a > 1;\n"
    assert sql.parse(text) == {"page": "SELECT a,\n       b\nFROM t\nWHERE a > 1"}


def test_parse_drops_comment_lines() -> None:
    text = ("-- name: q\n-- what it does\nSELECT a\n    -- an indented comment\nFROM t;\n"
            "-- a comment after the query\n")
    assert sql.parse(text) == {"q": "SELECT a\nFROM t"}


def test_parse_drops_the_trailing_semicolon_only() -> None:
    text = "-- name: q\nSELECT ';' AS s;\n"
    assert sql.parse(text) == {"q": "SELECT ';' AS s"}


def test_parse_ignores_the_text_before_the_first_name() -> None:
    text = "-- A file comment.\n-- Another one.\n\n-- name: only\nSELECT 1;\n"
    assert sql.parse(text) == {"only": "SELECT 1"}


def test_parse_of_text_without_names_is_empty() -> None:
    assert sql.parse("-- just a comment\nSELECT 1;\n") == {}
    assert sql.parse("") == {}


def test_a_name_marker_must_start_its_line() -> None:
    text = "-- name: q\nSELECT 1; -- name: not_a_block\n"
    assert list(sql.parse(text)) == ["q"]


def test_queries_has_every_name_that_the_store_uses() -> None:
    assert set(sql.queries()) >= STORE_QUERIES


def test_the_store_uses_the_queries_that_settle_and_read() -> None:
    assert {"insert_unique", "count_batch", "dead_letter", "dead_letters",
            "dead_letters_by_position", "events_page"} <= STORE_QUERIES


@pytest.mark.parametrize("name", sorted(STORE_QUERIES))
def test_a_store_query_is_clean_sql(name: str) -> None:
    query = sql.queries()[name]
    assert query
    assert query == query.strip()
    assert not query.endswith(";")
    assert not any(line.lstrip().startswith("--") for line in query.splitlines())


def test_migrations_start_with_0001_init() -> None:
    first = sql.migrations()[0]
    assert first.version == "0001_init"
    assert first.text == (SQL_DIR / "0001_init.sql").read_text()
    assert first.text.strip()
    assert first.transactional


def test_migration_versions_are_sorted_and_unique() -> None:
    versions = [m.version for m in sql.migrations()]
    assert versions == sorted(versions)
    assert len(versions) == len(set(versions))


def test_queries_sql_is_not_a_migration() -> None:
    assert "queries" not in [m.version for m in sql.migrations()]


def test_migrations_are_ordered_by_number_and_skip_other_files(tmp_path: Path) -> None:
    for name in ["0010_later.sql", "0002_second.sql", "0001_init.sql", "queries.sql",
                 "notes.txt", "01_short.sql"]:
        (tmp_path / name).write_text(f"-- {name}\n")
    assert sql.migrations(tmp_path) == [
        sql.Migration("0001_init", "-- 0001_init.sql\n"),
        sql.Migration("0002_second", "-- 0002_second.sql\n"),
        sql.Migration("0010_later", "-- 0010_later.sql\n"),
    ]


def test_an_empty_folder_has_no_migration(tmp_path: Path) -> None:
    assert sql.migrations(tmp_path) == []


def test_a_no_transaction_migration_is_split_at_each_semicolon_that_ends_a_line() -> None:
    migration = sql.Migration.parse("0009_index", (
        f"{sql.NO_TRANSACTION}\n"
        "-- why\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_by_topic\n"
        "    ON events (topic);\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS Events_Once ON events (id);  \n"
        "ANALYZE events;\n"))
    assert not migration.transactional
    assert migration.statements == (
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_by_topic\n    ON events (topic)",
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS Events_Once ON events (id)",
        "ANALYZE events")
    assert migration.indexes == ("events_by_topic", "events_once")


def test_a_migration_without_the_marker_runs_whole_in_a_transaction() -> None:
    migration = sql.Migration.parse("0009_table", "CREATE TABLE t (id int);\n")
    assert migration.transactional
    assert migration.statements == ()


@pytest.mark.parametrize("statement", [
    "CREATE INDEX CONCURRENTLY t_id ON t (id);",
    "CREATE INDEX IF NOT EXISTS t_id ON t (id);",
    'CREATE INDEX CONCURRENTLY IF NOT EXISTS "T_id" ON t (id);',
])
def test_a_migration_outside_a_transaction_refuses_an_index_it_could_not_build_again(
        statement: str) -> None:
    with pytest.raises(MigrationError, match="must say CONCURRENTLY IF NOT EXISTS"):
        sql.Migration.parse("0009_index", f"{sql.NO_TRANSACTION}\n{statement}\n")


def test_a_migration_outside_a_transaction_refuses_dollar_quotes() -> None:
    with pytest.raises(MigrationError, match="cannot hold dollar quotes"):
        sql.Migration.parse("0009_fn", f"{sql.NO_TRANSACTION}\nDO $$ BEGIN END $$;\n")
