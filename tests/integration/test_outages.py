"""Outages of PostgreSQL in the middle of a batch: the transaction rolls back, nothing is acked,
and the consumer retries the same batch until it commits."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

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
                    "WHERE query LIKE 'INSERT INTO events%' AND pid <> pg_backend_pid()")
        await eventually(lambda: drained(stream), what="batch retried and settled")
    assert counts(sql) == (40, 10, 40)
    assert worker.totals.batches == 1, "the killed attempt settled nothing"


async def _stalled(sql: psycopg.Connection[Any]) -> bool:
    await asyncio.sleep(0)
    row = sql.execute("SELECT count(*) FROM pg_stat_activity "
                      "WHERE query LIKE 'INSERT INTO events%' AND wait_event = 'PgSleep'"
                      ).fetchone()
    return bool(row and row[0] == 1)
