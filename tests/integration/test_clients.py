"""The pool's liveness check (`shared/clients.py`, `LivenessCheck`): a connection idle for longer
than the role's interval is checked with a round trip before it is handed out; one handed out
within the interval is not, and if it died meanwhile, the call that takes it fails once and the
pool replaces it. Ingest and the tools check every time (interval 0); a consumer skips the
check for 2 s after a batch. The connection dies as it does when its server restarts or an
operator ends it: its backend is terminated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shared.clients import CONSUMER, make_pool


async def _backend(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    assert row is not None
    return int(row[0])


@asynccontextmanager
async def _pool_whose_connection_died(database_url: str, sql: psycopg.Connection[Any],
                                      check_after_s: float
                                      ) -> AsyncIterator[tuple[AsyncConnectionPool, int]]:
    """A consumer's pool with the given interval, its one connection used, then terminated."""
    pool = make_pool(database_url, replace(CONSUMER, check_after_s=check_after_s),
                     "liveness-test")
    async with pool:
        first = await _backend(pool)
        row = sql.execute("SELECT pg_terminate_backend(%s)", [first]).fetchone()
        assert row == (True,)
        yield pool, first


async def test_a_connection_idle_past_the_interval_is_checked_and_replaced_before_use(
        database_url: str, sql: psycopg.Connection[Any]) -> None:
    async with _pool_whose_connection_died(database_url, sql, 0) as (pool, first):
        # Idle for longer than 0 s: checked, found dead, replaced; the caller sees nothing.
        assert await _backend(pool) != first


async def test_a_connection_used_within_the_interval_is_not_checked_and_a_dead_one_fails_once(
        database_url: str, sql: psycopg.Connection[Any]) -> None:
    async with _pool_whose_connection_died(database_url, sql, 3600) as (pool, first):
        # Handed out again at once: no round trip before use, so the call meets the dead
        # connection (the settling code turns this into StoreUnavailable and retries)...
        with pytest.raises(psycopg.OperationalError):
            await _backend(pool)
        # ...and the pool, given back a broken connection, does not hand it out again.
        assert await _backend(pool) != first
