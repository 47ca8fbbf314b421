"""The local stack's admin key (`logagg up`, `demo`, `bench`): made once per data folder, kept
there readable by its owner only, the same at every start, and replaced when it was revoked."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import psycopg

from services.stack import admin_key
from shared.keys import digest
from shared.settings import Settings
from shared.store import Store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def live_admin_keys(sql: psycopg.Connection[Any]) -> list[tuple[bytes, list[str]]]:
    rows = sql.execute("SELECT digest, scopes FROM api_keys WHERE revoked_at IS NULL "
                       "AND name = %s ORDER BY id", [admin_key.KEY_NAME]).fetchall()
    return [(bytes(row[0]), list(row[1])) for row in rows]


def test_the_first_start_makes_a_key_kept_in_the_data_folder_for_its_owner_only(
        settings: Settings, tmp_path: Path, sql: psycopg.Connection[Any]) -> None:
    key = admin_key.ensure(settings, tmp_path)
    kept = tmp_path / admin_key.KEY_FILE
    assert key.path == kept and key.note.startswith("new, kept in")
    assert kept.read_text() == key.secret + "\n"
    assert mode(kept) == 0o600
    assert live_admin_keys(sql) == [(digest(key.secret), ["admin"])]
    assert [path.name for path in tmp_path.iterdir()] == [admin_key.KEY_FILE]


def test_every_later_start_gives_the_same_key_and_makes_no_other(
        settings: Settings, tmp_path: Path, sql: psycopg.Connection[Any]) -> None:
    first = admin_key.ensure(settings, tmp_path)
    again = admin_key.ensure(settings, tmp_path)
    assert again.secret == first.secret
    assert again.note.startswith("the same as before")
    assert live_admin_keys(sql) == [(digest(first.secret), ["admin"])]


def test_a_kept_key_missing_from_the_database_is_made_there_again(
        settings: Settings, tmp_path: Path, sql: psycopg.Connection[Any]) -> None:
    """A data folder whose database was made anew (another --postgres-port, a restore)."""
    first = admin_key.ensure(settings, tmp_path)
    sql.execute("DELETE FROM api_keys")
    again = admin_key.ensure(settings, tmp_path)
    assert again.secret == first.secret
    assert live_admin_keys(sql) == [(digest(first.secret), ["admin"])]


def test_a_revoked_key_is_replaced_by_a_new_one_in_the_same_file(
        settings: Settings, tmp_path: Path, sql: psycopg.Connection[Any]) -> None:
    first = admin_key.ensure(settings, tmp_path)
    sql.execute("UPDATE api_keys SET revoked_at = now() WHERE digest = %s",
                [digest(first.secret)])
    again = admin_key.ensure(settings, tmp_path)
    assert again.secret != first.secret
    assert "had been revoked" in again.note
    assert (tmp_path / admin_key.KEY_FILE).read_text() == again.secret + "\n"
    assert mode(tmp_path / admin_key.KEY_FILE) == 0o600
    assert live_admin_keys(sql) == [(digest(again.secret), ["admin"])]


def test_a_file_that_holds_no_key_is_replaced_and_loose_rights_are_tightened(
        settings: Settings, tmp_path: Path) -> None:
    kept = tmp_path / admin_key.KEY_FILE
    kept.write_text("not a key\n")
    made = admin_key.ensure(settings, tmp_path)
    assert made.note.startswith("new") and kept.read_text() == made.secret + "\n"
    kept.chmod(0o644)
    assert admin_key.ensure(settings, tmp_path).secret == made.secret
    assert mode(kept) == 0o600


def test_a_given_key_is_made_sure_of_and_nothing_is_written(
        settings: Settings, tmp_path: Path, sql: psycopg.Connection[Any]) -> None:
    given = "lgk_" + "g" * 43
    key = admin_key.ensure(settings, tmp_path, given)
    assert (key.secret, key.path) == (given, None)
    assert list(tmp_path.iterdir()) == []
    assert digest(given) in [row[0] for row in live_admin_keys(sql)]


async def test_it_works_from_inside_a_running_event_loop(
        settings: Settings, tmp_path: Path, store: Store) -> None:
    """`logagg bench` starts its stack from a coroutine."""
    key = admin_key.ensure(settings, tmp_path)
    assert digest(key.secret) in {live.digest for live in await store.keys(live_only=True)}
