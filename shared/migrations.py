"""`logagg migrate`: apply the numbered files of `sql/` in order, each once.

Safe to run concurrently and repeatedly: an advisory lock lets one migrator work at a time, and a
migration and its row in `schema_migrations` commit together, so a crash leaves either both or
neither.

A file whose first line is `-- logagg: no-transaction` (for `CREATE INDEX CONCURRENTLY`, which
cannot run in a transaction) runs statement by statement in autocommit, and is recorded only
once all its statements succeeded; a crash leaves some applied and the file unrecorded, so the
next run runs them all again, and each must be idempotent (`IF NOT EXISTS`; shared/sql.py refuses
a `CREATE INDEX` without `CONCURRENTLY IF NOT EXISTS`). A concurrent build that failed or was
cut short leaves an INVALID index, which `IF NOT EXISTS` would then skip: before each such
statement the migrator drops the index it names if it is invalid, and after the file it checks
every index it names is valid, or fails (`MigrationError`) without recording it.

The lock is taken with `pg_try_advisory_lock`, polled, not with `pg_advisory_lock`: a migrator
blocked in that call holds a snapshot, and `CREATE INDEX CONCURRENTLY` waits for every older
snapshot in the database, so the one working and the one waiting would deadlock.

The database itself is created if it does not exist yet, in UTF-8; a database in another
encoding is refused before anything is applied (JSON text is Unicode: in SQL_ASCII, PostgreSQL
hands back bytes it cannot vouch for, and in a single-byte encoding it refuses events it
accepted).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared.exceptions import DatabaseEncodingError, MigrationError
from shared.paths import SQL_DIR
from shared.sql import Migration, index_built_by, migrations

logger = logging.getLogger(__name__)

# Any constant shared by every migrator: "logagg" in ASCII.
LOCK_ID = 0x6C6F67616767
LOCK_POLL_SECONDS = 0.05


def migrate(database_url: str, *, directory: Path = SQL_DIR) -> list[str]:
    """Apply what is missing; return the versions applied by this call."""
    create_database(database_url)
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        check_encoding(conn)
        wait_for_lock(conn)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         " version text PRIMARY KEY,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in migrations(directory):
                if migration.version in done:
                    continue
                if migration.transactional:
                    with conn.transaction():
                        conn.execute(migration.text.encode())
                        record(conn, migration)
                else:
                    apply_outside_transaction(conn, migration)
                    record(conn, migration)
                logger.info("migration applied", extra={"action": "migration_applied",
                                                        "version": migration.version})
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_ID])
    return applied_now


def wait_for_lock(conn: psycopg.Connection[Any]) -> None:
    """Take the migrators' advisory lock, polling, so that no snapshot is held while waiting."""
    waiting = False
    while conn.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_ID]).fetchone() != (True,):
        if not waiting:
            logger.info("waiting for another migrator", extra={"action": "migration_lock_wait"})
            waiting = True
        time.sleep(LOCK_POLL_SECONDS)


def record(conn: psycopg.Connection[Any], migration: Migration) -> None:
    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", [migration.version])


def apply_outside_transaction(conn: psycopg.Connection[Any], migration: Migration) -> None:
    """Each statement in autocommit; an invalid index left by a failed build is dropped first."""
    for statement in migration.statements:
        index = index_built_by(statement)
        if index:
            drop_if_invalid(conn, index)
        conn.execute(statement.encode())
    invalid = [index for index in migration.indexes if not index_is_valid(conn, index)]
    if invalid:
        raise MigrationError(f"migration {migration.version} left invalid or missing indexes "
                             f"{', '.join(invalid)}; it is not recorded")


def drop_if_invalid(conn: psycopg.Connection[Any], index: str) -> None:
    if index_is_valid(conn, index) is False:
        logger.warning("dropping an invalid index left by a failed build",
                       extra={"action": "migration_invalid_index_dropped", "index": index})
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(index)))


def index_is_valid(conn: psycopg.Connection[Any], index: str) -> bool | None:
    """Whether the index (found on the search path) is valid; None if there is none."""
    row = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                       [sql.Identifier(index).as_string(conn)]).fetchone()
    return None if row is None else bool(row[0])


def check_encoding(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    row = conn.execute("SELECT current_database(), pg_encoding_to_char(encoding) "
                       "FROM pg_database WHERE datname = current_database()").fetchone()
    assert row is not None
    # In a SQL_ASCII database psycopg gives text back as bytes: it cannot tell their encoding.
    name, encoding = (value.decode() if isinstance(value, bytes) else value for value in row)
    if encoding != "UTF8":
        raise DatabaseEncodingError(
            f"database {name!r} is in the {encoding} encoding; logagg needs UTF8. Let "
            f"`logagg migrate` create the database, or create it yourself with "
            f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' LOCALE 'C' TEMPLATE template0")


def create_database(database_url: str) -> None:
    """Create the database named in the URL unless it exists (connecting to `postgres` to do so)."""
    name = str(conninfo_to_dict(database_url).get("dbname") or "")
    maintenance = make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return
        try:
            # UTF-8 whatever the cluster's default (template0 may take any encoding), with the C
            # locale, which suits every encoding; logagg sorts by stream position, not by text.
            conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' LOCALE 'C' "
                                 "TEMPLATE template0").format(sql.Identifier(name)))
            logger.info("database created", extra={"action": "database_created", "database": name})
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            # Another migrator got there first: caught by the catalog's unique index when both
            # passed the existence check at once.
            pass
