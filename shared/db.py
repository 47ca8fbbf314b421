"""The PostgreSQL connection pool: one per process, opened and closed by its owner."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool


def make_pool(database_url: str, *, max_size: int, name: str,
              timeout: float = 30.0) -> AsyncConnectionPool:
    """A pool that is not open yet: its owner opens it (`await pool.open()`) and closes it.

    Connections are in autocommit mode: a transaction is always an explicit `conn.transaction()`
    block, so none is left open by accident between statements. Sessions speak UTC, so stored
    timestamps come back in UTC. `timeout` bounds the wait for a connection: past it the caller
    gets `PoolTimeout`, which is how an outage of PostgreSQL shows.
    """
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        name=name,
        timeout=timeout,
        open=False,
        kwargs={"autocommit": True, "options": "-c TimeZone=UTC"},
        # A connection that died with its server is dropped instead of handed out.
        check=AsyncConnectionPool.check_connection,
    )
