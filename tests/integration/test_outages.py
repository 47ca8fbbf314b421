"""Outages of PostgreSQL in the middle of a batch: the transaction rolls back, nothing is acked,
and the consumer retries the same batch until it commits."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import consumer, counts, drained, event, eventually, publish, running


async def test_a_connection_killed_mid_batch_rolls_back_and_the_batch_is_retried(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    # The first transaction to insert an event stalls inside the batch, long enough for the
    # test to kill its connection there; later ones pass.
    sql.execute("""
        CREATE TABLE stall_once (done boolean NOT NULL);
        INSERT INTO stall_once VALUES (false);
        CREATE FUNCTION stall_first_batch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT (SELECT done FROM stall_once) THEN PERFORM pg_sleep(30); END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER stall_first_batch BEFORE INSERT ON events
        FOR EACH STATEMENT EXECUTE FUNCTION stall_first_batch();
    """)
    await publish(stream, [event(f"e{i % 40}") for i in range(50)])
    worker = consumer(settings, stream, store, "worker")
    async with running(worker):
        await eventually(lambda: _stalled(sql), what="the batch stalled mid-transaction")
        sql.execute("UPDATE stall_once SET done = true")
        sql.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE wait_event = 'PgSleep' AND datname = current_database() "
                    "AND pid <> pg_backend_pid()")
        await eventually(lambda: drained(stream), what="batch retried and settled")
    assert counts(sql) == (40, 10, 40)
    assert worker.totals.batches == 1, "the killed attempt settled nothing"


async def _stalled(sql: psycopg.Connection[Any]) -> bool:
    await asyncio.sleep(0)
    row = sql.execute("SELECT count(*) FROM pg_stat_activity "
                      "WHERE wait_event = 'PgSleep' AND datname = current_database()"
                      ).fetchone()
    return bool(row and row[0] == 1)


async def test_a_logagg_session_bounds_idle_transactions_statements_and_silent_peers(
        store: Store) -> None:
    async with store.pool.connection() as conn:
        settings = await (await conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ("
            " 'idle_in_transaction_session_timeout', 'statement_timeout',"
            " 'tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count')"
            " ORDER BY name")).fetchall()
    # Milliseconds for the timeouts, seconds and probes for the keepalives. (Over a Unix
    # socket the server reports 0 for keepalives; the tests connect over TCP.)
    assert settings == [("idle_in_transaction_session_timeout", "5000"),
                        ("statement_timeout", "60000"), ("tcp_keepalives_count", "3"),
                        ("tcp_keepalives_idle", "10"), ("tcp_keepalives_interval", "5")]


async def test_a_transaction_a_client_leaves_idle_is_ended_by_the_server(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    async with store.pool.connection() as conn:
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            async with conn.transaction():
                backend = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())
                assert backend is not None

                async def ended() -> bool:
                    return sql.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                       [backend[0]]).fetchone() is None

                await eventually(ended, within=15, what="the idle transaction was ended")
                await conn.execute("SELECT 1")
