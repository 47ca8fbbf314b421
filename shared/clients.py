"""Clients of Redis and PostgreSQL: opened and closed here, and nowhere else.

Ingest, every consumer, `logagg dlq` and the integration tests get their `Stream` and `Store`
from `opened()`, in one order: Redis first, then PostgreSQL; closed in the reverse order, and a
failure while opening closes what was already open. PostgreSQL may be down when a process
starts: the pool opens without waiting unless its role says so, and calls made meanwhile raise
`StoreUnavailable` (see `shared/store_errors.py`).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.retention import Retention
from shared.settings import Settings
from shared.store import Store
from shared.store_errors import translated
from shared.stream import Stream


@dataclass(frozen=True, slots=True)
class Role:
    """How a kind of process uses PostgreSQL."""

    name: str
    pool_size: int  # connections at most
    pool_timeout: float  # seconds a call waits for a connection before StoreUnavailable
    wait_for_store: bool  # open only once PostgreSQL answers
    # A pooled connection not handed out for longer than this is checked before it is
    # (`LivenessCheck`); 0: every time.
    check_after_s: float = 0.0


# Ingest serves concurrent reads, and a read answers 503 quickly while PostgreSQL is down;
# a consumer settles one batch at a time and waits out outages; a command-line tool wants the
# store at once or a clear failure.
INGEST = Role("ingest", pool_size=4, pool_timeout=2.0, wait_for_store=False)
# A consumer takes its connection for every batch: it skips the check while busy (see
# `LivenessCheck`), as its Redis connection does (`health_check_interval`).
CONSUMER = Role("consumer", pool_size=1, pool_timeout=30.0, wait_for_store=False,
                check_after_s=2.0)
TOOL = Role("tool", pool_size=1, pool_timeout=30.0, wait_for_store=True)


@dataclass(frozen=True, slots=True)
class Clients:
    stream: Stream
    store: Store


def connect_redis(redis_url: str) -> Redis:
    """The Redis client every process uses. A connection idle for a couple of seconds is
    checked with a PING before use, and a command whose connection turns out dead is sent
    again on a fresh one: after a Redis restart, callers see the outage, not its leftovers."""
    return Redis.from_url(
        # A blocking read waits READ_BLOCK_MS (1 s) at most: 10 s without an answer is a hang.
        redis_url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=2,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError])


# Every logagg session speaks UTC, and bounds what it can hold up: the server ends a transaction
# left idle for 5 s (a client frozen or gone away while holding row locks, which a duplicate of
# a key it inserted waits on) and any statement after 60 s; TCP keepalives on both ends notice a
# peer gone silent in about 25 s instead of the kernel's two hours. PostgreSQL arms the idle
# timeout only after a Sync, so the settling transaction syncs its pipeline before each wait
# (shared/store.py). A logagg transaction is idle for milliseconds.
SESSION_OPTIONS = " ".join(f"-c {name}={value}" for name, value in {
    "TimeZone": "UTC", "idle_in_transaction_session_timeout": "5s",
    "statement_timeout": "60s", "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3"}.items())
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}


class LivenessCheck:
    """The pool's check of a connection before handing it out: a round trip, skipped for a
    connection handed out within the last `after_s` seconds. A busy consumer takes its
    connection for every batch, and the check was one of the seven round trips a batch costs.
    A connection that died since its last use (its server restarted a moment ago) then fails
    the call that takes it, which raises StoreUnavailable like any outage met mid-call (the
    consumer retries its batch), and the pool does not hand it out again
    (`integration/test_clients.py`)."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._handed_out: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary())

    async def __call__(self, conn: AsyncConnection[Any]) -> None:
        now = time.monotonic()
        last = self._handed_out.get(conn)
        if last is None or now - last > self.after_s:
            await AsyncConnectionPool.check_connection(conn)
        self._handed_out[conn] = now  # after the check: one that fails is not recorded


def make_pool(database_url: str, role: Role, name: str) -> AsyncConnectionPool:
    """A pool that is not open yet.

    Connections are in autocommit mode: a transaction is always an explicit `conn.transaction()`
    block, so none is left open by accident between statements. Sessions are set up as
    SESSION_OPTIONS says, and named after their process (`application_name`, as
    pg_stat_activity shows them). A connection that died with its server is dropped instead of
    handed out, unless the role's `check_after_s` lets a busy one skip the check.
    """
    return AsyncConnectionPool(
        database_url, min_size=1, max_size=role.pool_size, name=name,
        timeout=role.pool_timeout, open=False,
        kwargs={"autocommit": True, "options": SESSION_OPTIONS, "application_name": name,
                **KEEPALIVES},
        check=LivenessCheck(role.check_after_s))


@asynccontextmanager
async def opened(settings: Settings, role: Role, name: str | None = None
                 ) -> AsyncIterator[Clients]:
    """The stream and the store of this deployment, for as long as the block runs."""
    redis = connect_redis(settings.redis_url)
    try:
        pool = make_pool(settings.database_url, role, name or role.name)
        try:
            with translated():
                await pool.open(wait=role.wait_for_store)
            yield Clients(
                Stream(redis, key=settings.stream_key, group=settings.consumer_group),
                Store(pool, settings.stream_key, Retention.of(settings)))
        finally:
            await pool.close()
    finally:
        await redis.aclose()
