"""Integration fixtures: one Redis and one PostgreSQL for the session; for each test a fresh
database (cloned from a migrated template) and a fresh stream key, so tests share nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.keys import __main__ as keys
from services.stack.servers import PostgresServer, RedisServer
from shared.clients import Clients, Role, opened
from shared.migrations import migrate
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import ADMIN_KEY, api_client

TEMPLATE = "logagg_template"


@pytest.fixture(scope="session")
def template_database(postgres_server: PostgresServer) -> str:
    """Migrated, and holding the tests' ADMIN_KEY, so every test database starts with both."""
    url = postgres_server.url(TEMPLATE)
    migrate(url)
    asyncio.run(keys.create(Settings.from_env({}, database_url=url), "tests",
                            scopes=["admin"], secret=ADMIN_KEY))
    return TEMPLATE


@pytest.fixture
def database_url(postgres_server: PostgresServer, template_database: str) -> str:
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    return postgres_server.url(name)


@pytest.fixture
def settings(redis_server: RedisServer, database_url: str) -> Settings:
    return Settings.from_env(
        {}, redis_url=redis_server.url, database_url=database_url,
        stream_key=f"events-{uuid.uuid4().hex[:12]}", consumer_group="aggregator",
        consumer_name="test-consumer", claim_idle_ms=200, batch_size=50, metrics_port=0)


# Like a command-line tool, but with room for the concurrent transactions some tests run.
TEST_ROLE = Role("test", pool_size=8, pool_timeout=30.0, wait_for_store=True)


@pytest.fixture
async def clients(settings: Settings) -> AsyncIterator[Clients]:
    """The stream and the store, opened as every logagg process opens them."""
    async with opened(settings, TEST_ROLE) as test_clients:
        yield test_clients


@pytest.fixture
def redis(clients: Clients) -> Redis:
    return clients.stream.redis


@pytest.fixture
def stream(clients: Clients) -> Stream:
    return clients.stream


@pytest.fixture
def store(clients: Clients) -> Store:
    return clients.store


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    async with api_client(settings) as client:
        yield client


@pytest.fixture
def sql(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection for asserting on rows."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
