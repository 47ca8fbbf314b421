"""`logagg migrate`: apply the numbered files of `sql/` in order, each once.

Safe to run concurrently and repeatedly: an advisory lock lets one migrator work at a time, and a
migration and its row in `schema_migrations` commit together, so a crash leaves either both or
neither. The database itself is created if it does not exist yet, in UTF-8; a database in
another encoding is refused before anything is applied (JSON text is Unicode: in SQL_ASCII,
PostgreSQL hands back bytes it cannot vouch for, and in a single-byte encoding it refuses
events it accepted).
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared.exceptions import DatabaseEncodingError
from shared.sql import migrations

logger = logging.getLogger(__name__)

# Any constant shared by every migrator: "logagg" in ASCII.
LOCK_ID = 0x6C6F67616767


def migrate(database_url: str) -> list[str]:
    """Apply what is missing; return the versions applied by this call."""
    create_database(database_url)
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        check_encoding(conn)
        conn.execute("SELECT pg_advisory_lock(%s)", [LOCK_ID])
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         " version text PRIMARY KEY,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, text in migrations():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(text.encode())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", [version])
                logger.info("migration applied", extra={"action": "migration_applied",
                                                        "version": version})
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_ID])
    return applied_now


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
