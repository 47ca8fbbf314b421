"""API keys (SPEC §3a), through the real app on real Redis and PostgreSQL: every 401, 403 and 429
path, nothing enqueued on any of them, limits shared by every ingest process, and revocation
seen by all of them."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.ingest.keys import KEYRING
from services.keys import __main__ as keys
from services.stack.servers import free_port
from shared.constants import received_key
from shared.keys import digest
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import (
    ADMIN_KEY,
    api_client,
    bearer,
    event,
    eventually,
    nothing_enqueued,
    run_until_drained,
)

Client = TestClient[Any, Any]
JSON = {"Content-Type": "application/json"}


async def make(settings: Settings, *clients: Client, **limits: Any) -> str:
    """A new key, which the ingest apps of `clients` hold already (rather than within
    KEYS_REFRESH_MS)."""
    limits.setdefault("scopes", ["publish"])
    made = await keys.create(settings, "test", **limits)
    for client in clients:
        ring = client.server.app[KEYRING]
        assert ring is not None
        await ring.refresh()
    return made.secret


async def post(client: Client, body: Any, key: str | None) -> Any:
    headers = {**JSON, **(bearer(key) if key else {})}
    return await client.post("/publish", data=orjson.dumps(body), headers=headers)


async def refused(answer: Any, status: int, error: str) -> dict[str, Any]:
    assert answer.status == status, await answer.text()
    body: dict[str, Any] = await answer.json()
    assert body["error"] == error
    return body


@pytest.fixture
async def keyless(settings: Settings) -> Any:
    """A client that sends no key of its own: each request says which it uses."""
    async with api_client(settings, key=None) as client:
        yield client


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc",
    "Bearer lgk_not-a-key-we-made", f"Bearer {ADMIN_KEY}x", f"bearer{ADMIN_KEY}",
], ids=["none", "empty", "no key", "blank key", "basic", "other scheme", "unknown",
        "one char more", "no space"])
async def test_a_request_without_a_valid_key_is_a_401_that_enqueues_nothing(
        keyless: Client, redis: Redis, settings: Settings, authorization: str | None) -> None:
    headers = {**JSON, **({"Authorization": authorization} if authorization is not None else {})}
    answer = await keyless.post("/publish", data=orjson.dumps(event()), headers=headers)
    await refused(answer, 401, "unauthorized")
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="logagg"'
    for path in ("/events", "/stats", "/metrics"):
        await refused(await keyless.get(path, headers=headers), 401, "unauthorized")
    assert await nothing_enqueued(redis, settings)


async def test_the_scheme_is_case_insensitive(keyless: Client) -> None:
    answer = await keyless.post("/publish", data=orjson.dumps(event()),
                                headers={**JSON, "Authorization": f"bEaReR {ADMIN_KEY}"})
    assert answer.status == 202


async def test_health_checks_and_static_pages_need_no_key(keyless: Client) -> None:
    for path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json"):
        assert (await keyless.get(path)).status == 200, path


@pytest.mark.parametrize(("scopes", "allowed"), [
    (["publish"], {"/publish"}),
    (["read"], {"/events", "/stats", "/metrics"}),
    (["publish", "read"], {"/publish", "/events", "/stats", "/metrics"}),
    (["admin"], {"/publish", "/events", "/stats", "/metrics"}),
])
async def test_each_scope_opens_its_routes_and_the_others_answer_403(
        keyless: Client, redis: Redis, settings: Settings, scopes: list[str],
        allowed: set[str]) -> None:
    key = await make(settings, keyless, scopes=scopes)
    for path in ("/events", "/stats", "/metrics"):
        answer = await keyless.get(path, headers=bearer(key))
        if path in allowed:
            assert answer.status == 200, path
        else:
            body = await refused(answer, 403, "forbidden")
            assert "'read' scope" in body["message"]
    answer = await post(keyless, event(), key)
    if "/publish" in allowed:
        assert answer.status == 202
    else:
        assert "'publish' scope" in (await refused(answer, 403, "forbidden"))["message"]
        assert await nothing_enqueued(redis, settings)


async def test_one_event_outside_the_keys_topics_refuses_the_whole_request(
        keyless: Client, redis: Redis, settings: Settings) -> None:
    key = await make(settings, keyless, topics=["auth", "app.*"])
    batch = [event("1", topic="auth"), event("2", topic="app.web"), event("3", topic="billing"),
             event("4", topic="app"), event("5", topic="app.")]
    body = await refused(await post(keyless, batch, key), 403, "forbidden")
    assert [(d["index"], d["path"]) for d in body["details"]] == [(2, "/topic"), (3, "/topic")]
    assert body["message"] == "2 event(s) are outside this key's limits; none was accepted"
    assert await nothing_enqueued(redis, settings)
    answer = await post(keyless, [event("1", topic="auth"), event("2", topic="app.web")], key)
    assert answer.status == 202


async def test_a_key_bound_to_a_source_refuses_a_request_with_any_other(
        keyless: Client, redis: Redis, settings: Settings) -> None:
    key = await make(settings, keyless, source="svc-login")
    batch = [event(str(i), source="svc-login") for i in range(3)] + \
        [event("x", source="svc-login2")]
    body = await refused(await post(keyless, batch, key), 403, "forbidden")
    assert body["details"] == [{"index": 3, "path": "/source",
                                "message": "this key is bound to source 'svc-login'"}]
    assert await nothing_enqueued(redis, settings)
    assert (await post(keyless, batch[:3], key)).status == 202


async def test_a_403_lists_at_most_the_first_problems(
        keyless: Client, settings: Settings) -> None:
    key = await make(settings, keyless, topics=["auth"], source="s")
    batch = [event(str(i), topic="other", source="t") for i in range(1000)]
    body = await refused(await post(keyless, batch, key), 403, "forbidden")
    assert len(body["details"]) == 100


async def test_over_the_rate_is_a_429_with_retry_after_that_enqueues_nothing(
        keyless: Client, redis: Redis, settings: Settings) -> None:
    key = await make(settings, keyless, rate=0.5, burst=5)
    assert (await post(keyless, [event(str(i)) for i in range(5)], key)).status == 202
    answer = await post(keyless, event("6"), key)
    body = await refused(answer, 429, "rate_limited")
    assert "none was accepted" in body["message"]
    # One event refills in 2 s at 0.5/s.
    assert answer.headers["Retry-After"] == "2"
    assert int(await redis.get(received_key(settings.stream_key))) == 5
    assert await redis.xlen(settings.stream_key) == 5


async def test_the_rate_refills_and_a_request_larger_than_the_burst_waits_for_a_full_bucket(
        keyless: Client, settings: Settings) -> None:
    key = await make(settings, keyless, rate=100, burst=10)
    # A full bucket admits even more than the burst, leaving it in debt: no request is
    # refused for good, and the average rate still holds.
    assert (await post(keyless, [event(str(i)) for i in range(30)], key)).status == 202
    assert (await post(keyless, event("next"), key)).status == 429

    async def admitted_again() -> bool:
        return (await post(keyless, event("later"), key)).status == 202

    await eventually(admitted_again, within=10)


async def test_the_rate_is_one_budget_shared_by_every_ingest_process(
        settings: Settings, redis: Redis) -> None:
    key = await make(settings, rate=0.01, burst=10)
    async with api_client(settings, key) as first, api_client(settings, key) as second:
        assert (await post(first, [event(str(i)) for i in range(6)], key)).status == 202
        await refused(await post(second, [event(f"b{i}") for i in range(6)], key), 429,
                      "rate_limited")
        assert (await post(second, [event(f"c{i}") for i in range(4)], key)).status == 202
        await refused(await post(first, event("d"), key), 429, "rate_limited")
    assert int(await redis.get(received_key(settings.stream_key))) == 10


async def test_a_revoked_key_stops_working_on_every_ingest_within_a_second(
        settings: Settings, store: Store) -> None:
    key = await make(settings, scopes=["read"])
    async with api_client(settings, key) as first, api_client(settings, key) as second:
        assert (await first.get("/stats")).status == 200
        assert (await second.get("/stats")).status == 200
        [made] = [k for k in await store.keys() if k.digest == digest(key)]
        assert await store.revoke_key(made.id)
        revoked_at = time.monotonic()

        async def both_refuse() -> bool:
            statuses = [(await client.get("/stats")).status for client in (first, second)]
            return statuses == [401, 401]

        await eventually(both_refuse, within=5)
        # KEYS_REFRESH_MS (500) and a query; room for a loaded machine, none for a leak.
        assert time.monotonic() - revoked_at < 2.0
        assert not await store.revoke_key(made.id)  # already revoked


async def test_a_new_key_works_on_every_ingest_without_a_restart(
        settings: Settings) -> None:
    async with api_client(settings, key=None) as first, api_client(settings, key=None) as other:
        key = await make(settings, scopes=["read"])

        async def both_accept() -> bool:
            statuses = [(await c.get("/stats", headers=bearer(key))).status
                        for c in (first, other)]
            return statuses == [200, 200]

        await eventually(both_accept, within=5)


async def test_with_auth_off_no_key_is_asked_for(settings: Settings) -> None:
    async with api_client(dataclasses.replace(settings, auth="off"), key=None) as client:
        assert (await post(client, event(), None)).status == 202
        assert (await client.get("/stats")).status == 200


async def test_an_ingest_that_never_read_the_keys_answers_503_not_401(
        settings: Settings, redis: Redis) -> None:
    down = dataclasses.replace(
        settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/logagg")
    async with api_client(down) as client:
        answer = await post(client, event(), ADMIN_KEY)
        body = await refused(answer, 503, "keys_unavailable")
        assert answer.headers["Retry-After"] == "1"
        assert "retry" in body["message"]
    assert await nothing_enqueued(redis, settings)


async def test_an_ingest_keeps_its_keys_through_a_store_outage(
        settings: Settings, database_url: str, redis: Redis) -> None:
    """Ingest accepts events while PostgreSQL is down: with the keys it read last."""
    async with api_client(settings) as client:
        with psycopg.connect(database_url, autocommit=True) as sql:
            # The keys table made unreadable stands for a store that stopped answering.
            sql.execute("ALTER TABLE api_keys RENAME TO api_keys_away")
            try:
                ring = client.server.app[KEYRING]
                assert ring is not None

                async def stale() -> bool:  # refreshes fail, and the keys age
                    return time.monotonic() - ring.read_at > settings.keys_refresh_ms / 1000 * 3

                await eventually(stale, within=10)
                assert (await post(client, event(), ADMIN_KEY)).status == 202
            finally:
                sql.execute("ALTER TABLE api_keys_away RENAME TO api_keys")


# -- logagg keys ---------------------------------------------------------------------------------

def logagg(settings: Settings, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "keys", *args], capture_output=True, text=True,
        timeout=60, check=False,
        env={**os.environ, "DATABASE_URL": settings.database_url, **(env or {})})


def test_keys_create_prints_the_secret_once_and_stores_only_its_digest(
        settings: Settings, database_url: str) -> None:
    made = logagg(settings, "create", "shipper", "--scopes", "publish,read", "--topics",
                  "auth,app.*", "--source", "svc", "--rate", "50", "--json")
    assert made.returncode == 0, made.stderr
    shown = orjson.loads(made.stdout)
    assert {"id", "name", "key"} <= set(shown)
    assert shown["name"] == "shipper" and shown["scopes"] == ["publish", "read"]
    assert shown["topics"] == ["auth", "app.*"] and shown["source"] == "svc"
    assert shown["rate"] == 50 and shown["burst"] == 50
    secret = shown["key"]
    listed = logagg(settings, "list", "--json")
    assert listed.returncode == 0
    assert secret not in listed.stdout and secret[12:] not in listed.stdout
    assert any(orjson.loads(line)["id"] == shown["id"] for line in listed.stdout.splitlines())
    with psycopg.connect(database_url) as sql:
        dump = "\n".join(str(row) for row in sql.execute("SELECT * FROM api_keys"))
    assert secret not in dump and secret.encode().hex() not in dump
    text = logagg(settings, "create", "human")
    assert text.returncode == 0 and "key: lgk_" in text.stdout and "shown this once" in text.stdout


def test_keys_revoke_then_list_shows_it_revoked(settings: Settings) -> None:
    made = orjson.loads(logagg(settings, "create", "gone", "--json").stdout)
    revoked = logagg(settings, "revoke", str(made["id"]))
    assert revoked.returncode == 0 and revoked.stdout.strip() == f"revoked key {made['id']}"
    again = logagg(settings, "revoke", str(made["id"]))
    assert again.returncode == 1 and "no live key" in again.stderr
    listing = logagg(settings, "list").stdout
    line = next(line for line in listing.splitlines() if "'gone'" in line)
    assert "revoked" in line


def test_keys_create_from_the_environment_is_idempotent(settings: Settings) -> None:
    secret = "compose-" + "s3cret" * 8
    env = {"PUBLISH_KEY": secret}
    first = logagg(settings, "create", "publisher", "--key-env", "PUBLISH_KEY", "--json", env=env)
    second = logagg(settings, "create", "publisher", "--key-env", "PUBLISH_KEY", "--json", env=env)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    one, two = orjson.loads(first.stdout), orjson.loads(second.stdout)
    assert (one["created"], two["created"]) == (True, False)
    assert one["id"] == two["id"] and one["key"] == secret
    revoked = logagg(settings, "revoke", str(one["id"]))
    assert revoked.returncode == 0
    reused = logagg(settings, "create", "publisher", "--key-env", "PUBLISH_KEY", env=env)
    assert reused.returncode == 2 and "revoked" in reused.stderr


@pytest.mark.parametrize(("args", "why"), [
    (["--scopes", "publish,root"], "unknown scope"),
    (["--burst", "5"], "--burst needs --rate"),
    (["--rate", "0"], "--rate must be more than 0"),
    (["--rate", "5", "--burst", "0.5"], "--burst must be at least 1"),
    (["--key-env", "SHORT_KEY"], "32 to 256 characters"),
    (["--key-env", "UNSET_KEY"], "UNSET_KEY is not set"),
])
def test_keys_create_refuses_bad_limits_and_stores_nothing(
        settings: Settings, database_url: str, args: list[str], why: str) -> None:
    with psycopg.connect(database_url) as sql:
        before = sql.execute("SELECT count(*) FROM api_keys").fetchone()
    answer = logagg(settings, "create", "bad", *args, env={"SHORT_KEY": "short"})
    assert answer.returncode == 2 and why in answer.stderr
    with psycopg.connect(database_url) as sql:
        assert sql.execute("SELECT count(*) FROM api_keys").fetchone() == before


async def test_a_client_that_expects_100_continue_learns_of_a_bad_key_before_uploading(
        keyless: Client, redis: Redis, settings: Settings) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", keyless.port)
    try:
        writer.write(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\nExpect: 100-continue\r\n"
                     b"Authorization: Bearer lgk_not-a-key-we-made-not-a-key-we-made\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 401 "), status_line
    assert await nothing_enqueued(redis, settings)


async def test_a_key_limited_to_topics_reads_only_those(
        keyless: Client, settings: Settings) -> None:
    key = await make(settings, keyless, scopes=["read"], topics=["auth", "app.*"])
    for topic in ("auth", "app.web"):
        answer = await keyless.get("/events", params={"topic": topic}, headers=bearer(key))
        assert answer.status == 200, topic
    for params in ({"topic": "billing"}, {"topic": "app"}, {}):
        await refused(await keyless.get("/events", params=params, headers=bearer(key)), 403,
                      "forbidden")


async def test_a_key_limited_to_topics_sees_only_those_in_stats(
        keyless: Client, settings: Settings, stream: Stream, store: Store) -> None:
    await stream.ensure_group()
    batch = [event("1", topic="auth"), event("2", topic="app.web"), event("3", topic="billing")]
    assert (await post(keyless, batch, ADMIN_KEY)).status == 202
    await run_until_drained(settings, stream, store)
    everything = await (await keyless.get("/stats", headers=bearer(ADMIN_KEY))).json()
    assert set(everything["topics"]) == {"auth", "app.web", "billing"}
    key = await make(settings, keyless, scopes=["read"], topics=["auth", "app.*"])
    limited = await (await keyless.get("/stats", headers=bearer(key))).json()
    assert set(limited["topics"]) == {"auth", "app.web"}
    assert limited["unique_processed"] == 3  # the totals stay the deployment's
