"""`schema/openapi.json` against the implementation: the routes, the key each one asks for, every
status each route answers, the shape of every body and header, the request schema, and the pages
that serve the document.

Each scenario below drives the real app (real Redis and PostgreSQL, or an unreachable one) to one
documented status of one route and validates what comes back against the document: status, body
and the headers that tell a client what to do (`Retry-After`, `WWW-Authenticate`). Together the
scenarios must produce every documented status of every route, so the document can neither
promise a status the server never sends nor miss one that it does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, ClientSession
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from services.ingest.app import create_app
from services.ingest.keys import KEYRING
from services.ingest.routes import ROUTES
from services.ingest.server import serving
from services.keys import __main__ as keys
from services.stack.servers import free_port
from shared.keys import ADMIN
from shared.paths import OPENAPI_FILE, SCHEMA_FILE, STATIC_DIR
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream
from tests.helpers import (
    ADMIN_KEY,
    api_client,
    bearer,
    event,
    otlp_json,
    otlp_logs,
    settle_like_a_consumer,
)

Client = TestClient[Any, Any]

DOCUMENT: dict[str, Any] = orjson.loads(OPENAPI_FILE.read_bytes())
DOCUMENT_URI = "urn:logagg:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(
    DOCUMENT_URI, DRAFT202012.create_resource(DOCUMENT))
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
OTLP_STATUS_REF = {"$ref": "#/components/schemas/OtlpStatus"}
# Headers that tell a client what to do next: an answer that carries one must document it.
INSTRUCTIONS = ("Retry-After", "WWW-Authenticate", "Allow")


# -- reading the document ------------------------------------------------------------------------

def pointer(*parts: str) -> str:
    """RFC 6901 JSON Pointer to a place in the document."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def validator(*parts: str) -> Draft202012Validator:
    """A validator for the schema at `parts` of the document, its `$ref`s resolved in it."""
    return Draft202012Validator({"$ref": f"{DOCUMENT_URI}#{pointer(*parts)}"},
                                registry=REGISTRY,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """`node`, or what its local `$ref` (`#/components/...`) names."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = DOCUMENT
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def documented_statuses() -> set[tuple[str, str, int]]:
    return {(method, path, int(status))
            for method, path, operation in operations() for status in operation["responses"]}


def response_at(method: str, path: str, status: int) -> tuple[str, ...]:
    """Where the documented response to `status` lives: in the operation, or in
    `components/responses` when the operation refers to a shared one."""
    responses = DOCUMENT["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which is not documented"
    ref = responses[str(status)].get("$ref")
    if ref is None:
        return ("paths", path, method.lower(), "responses", str(status))
    assert ref.startswith("#/components/responses/"), ref
    return ("components", "responses", ref.rsplit("/", 1)[1])


def documented_response(method: str, path: str, status: int) -> dict[str, Any]:
    return resolve({"$ref": "#" + pointer(*response_at(method, path, status))})


def schemas_in(node: Any) -> Iterator[dict[str, Any]]:
    """Every object of the document that declares a type, at any depth."""
    if isinstance(node, dict):
        if "type" in node:
            yield node
        for value in node.values():
            yield from schemas_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from schemas_in(value)


# -- the scenarios -------------------------------------------------------------------------------

@dataclass(frozen=True)
class World:
    client: Client
    stream: Stream
    store: Store
    settings: Settings  # the test's (the database keys are made in), not a variant's


Send = Callable[[World], Awaitable[ClientResponse]]
Variant = Callable[[Settings], Settings]
# An `Authorization` header value for a request, made when the scenario runs.
Credential = Callable[[World], Awaitable[str]]


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str
    status: int
    send: Send
    variant: Variant | None = None  # settings of the app under test; None: the `client` fixture
    error: str | None = None  # the error code the answer must carry
    retry_after: str | None = None
    check: Callable[[Any], bool] | None = None  # more to expect of the JSON body
    key: str | None = ADMIN_KEY  # the key the client sends unless a request says otherwise


def redis_down(settings: Settings) -> Settings:
    return dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")


def keys_never_read(settings: Settings) -> Settings:
    """An ingest started while PostgreSQL is down, keys on: it never read them, so every keyed
    route answers 503 `keys_unavailable`."""
    return dataclasses.replace(
        settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/logagg")


def postgres_down(settings: Settings) -> Settings:
    """An ingest started while PostgreSQL is down. Without keys: one that never read them
    answers 503 `keys_unavailable` (`keys_never_read`); these show the rest of the outage."""
    return dataclasses.replace(keys_never_read(settings), auth="off")


def both_down(settings: Settings) -> Settings:
    return postgres_down(redis_down(settings))


def limits(**changes: Any) -> Variant:
    return lambda settings: dataclasses.replace(settings, **changes)


async def post(client: Client, body: Any, content_type: str = "application/json",
               authorization: str | None = None) -> ClientResponse:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post("/publish", data=data,
                             headers={"Content-Type": content_type, **auth(authorization)})


def auth(authorization: str | None) -> dict[str, str]:
    """Headers sending `authorization` instead of the client's own key (None: the client's)."""
    return {} if authorization is None else {"Authorization": authorization}


async def authorization(world: World, key: Credential | None) -> str | None:
    return None if key is None else await key(world)


def publish(body: Any, content_type: str = "application/json", *,
            key: Credential | None = None) -> Send:
    async def send(world: World) -> ClientResponse:
        return await post(world.client, body, content_type, await authorization(world, key))
    return send


def get(path: str, params: Any = None, *, key: Credential | None = None) -> Send:
    async def send(world: World) -> ClientResponse:
        return await world.client.get(path, params=params,
                                      headers=auth(await authorization(world, key)))
    return send


# -- keys ----------------------------------------------------------------------------------------

async def keys_read_again(world: World) -> None:
    """The app under test reads the keys now, rather than within KEYS_REFRESH_MS."""
    ring = world.client.server.app[KEYRING]
    assert ring is not None
    await ring.refresh()


async def made(world: World, **limits: Any) -> keys.Made:
    """A new key, which the app under test holds already."""
    new = await keys.create(world.settings, "openapi", **{"scopes": ["publish"], **limits})
    await keys_read_again(world)
    return new


def a_key(**limits: Any) -> Credential:
    """A key with `limits` (`scopes`: publish unless given), made for the scenario."""
    async def credential(world: World) -> str:
        return f"Bearer {(await made(world, **limits)).secret}"
    return credential


async def a_revoked_key(world: World) -> str:
    key = await made(world, scopes=["read"])
    assert await world.store.revoke_key(key.key.id)
    await keys_read_again(world)
    return f"Bearer {key.secret}"


def literally(value: str) -> Credential:
    async def credential(world: World) -> str:
        return value
    return credential


async def over_the_rate(world: World) -> ClientResponse:
    """Five events spend a burst of five; the sixth waits 2 s for the bucket (0.5 event/s)."""
    key = await a_key(rate=0.5, burst=5)(world)
    assert (await post(world.client, [event(str(i)) for i in range(5)],
                       authorization=key)).status == 202
    return await post(world.client, event("6"), authorization=key)


async def store_events(world: World, *events: dict[str, Any]) -> None:
    """Publish `events` through the API and settle them as a consumer does: settle, then ack."""
    assert (await post(world.client, list(events))).status == 202
    await world.stream.ensure_group()
    raw = await world.stream.read_new("c", 100, 100)
    assert len(raw) == len(events)
    await settle_like_a_consumer(world.stream, world.store, raw)


THREE = (event("e0", topic="auth"), event("e1", topic="billing"), event("e2", topic="auth"))


async def a_full_page(world: World) -> ClientResponse:
    await store_events(world, *THREE)
    return await world.client.get("/events", params={"limit": "2"})


async def the_last_page(world: World) -> ClientResponse:
    first = await a_full_page(world)
    cursor = (await first.json())["next"]
    return await world.client.get("/events", params={"limit": "2", "after": cursor})


async def one_topic(world: World) -> ClientResponse:
    await store_events(world, *THREE)
    return await world.client.get("/events", params={"topic": "auth"})


async def counters_with_topics(world: World) -> ClientResponse:
    await store_events(world, *THREE, event("e0", topic="auth"))
    return await world.client.get("/stats")


async def the_busiest_topic(world: World) -> ClientResponse:
    await store_events(world, *THREE, event("e0", topic="auth"))
    return await world.client.get("/stats", params={"topics": "1"})


def stats_of_three_and_a_copy(body: Any) -> bool:
    """THREE and a copy of e0, settled: every counter, and each topic's split."""
    counters = {name: value for name, value in body.items() if name != "uptime_seconds"}
    return bool(counters == {
        "received": 4, "unique_processed": 3, "duplicate_dropped": 1, "dead_lettered": 0,
        "pending": 0,
        "topics": {"auth": {"unique_processed": 2, "duplicate_dropped": 1},
                   "billing": {"unique_processed": 1, "duplicate_dropped": 0}},
        "topics_total": 2, "alarms": []})


async def a_topic_past_the_limit(world: World) -> ClientResponse:
    """Two topics stored (auth, billing) under MAX_TOPICS 2; a third is refused."""
    await store_events(world, *THREE)
    return await publish([event("p1", topic="auth"), event("p2", topic="payments")])(world)


def a_body_that_stops_coming(path: str, opening: bytes) -> Send:
    """A body that sends `opening` to `path`, then stalls. Through the edge
    (services/ingest/server.py), which keeps the body's deadline: the test client's server has
    none."""
    async def send(world: World) -> ClientResponse:
        async def stalled() -> AsyncIterator[bytes]:
            yield opening
            await asyncio.sleep(60)  # the server answers long before
            yield b"]"
        settings = dataclasses.replace(world.settings, body_timeout_ms=300,
                                       ingest_host="127.0.0.1", ingest_port=0)
        async with serving(create_app(settings), settings) as site, \
                ClientSession(headers=bearer()) as session:
            answer = await session.post(f"http://127.0.0.1:{site.port}{path}", data=stalled(),
                                        headers={"Content-Type": "application/json"})
            await answer.read()  # the response keeps it for the test's own read
        return answer
    return send


async def a_full_backlog(world: World) -> ClientResponse:
    assert (await publish([event(f"a{i}") for i in range(8)])(world)).status == 202
    return await publish([event(f"b{i}") for i in range(3)])(world)


async def a_streamed_body_over_the_limit(world: World) -> ClientResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield orjson.dumps(event(payload={"blob": "x" * 2000}))
    return await world.client.post("/publish", data=chunks(),
                                   headers={"Content-Type": "application/json"})


def ids_of(body: Any) -> list[str]:
    return [e["event_id"] for e in body["events"]]


def problems(body: Any) -> list[tuple[int, str]]:
    return [(problem["index"], problem["path"]) for problem in body["details"]]


UNKNOWN_KEY = "Bearer lgk_" + "x" * 43
PROTOBUF = "application/x-protobuf"


def otlp(body: bytes, content_type: str = "application/json", *,
         key: Credential | None = None) -> Send:
    """POST /v1/logs; `body` in protobuf, sent in JSON unless `content_type` says protobuf."""
    async def send(world: World) -> ClientResponse:
        data = body if content_type != "application/json" else otlp_json(body)
        return await world.client.post("/v1/logs", data=data, headers={
            "Content-Type": content_type, **auth(await authorization(world, key))})
    return send


def status(code: str) -> Callable[[Any], bool]:
    """A google.rpc.Status in JSON whose message starts with our error `code`."""
    return lambda body: str(body["message"]).startswith(f"{code}: ")


async def otlp_over_the_rate(world: World) -> ClientResponse:
    key = await a_key(rate=0.5, burst=5)(world)
    assert (await otlp(otlp_logs(records=5), key=literally(key))(world)).status == 200
    return await otlp(otlp_logs(), key=literally(key))(world)


async def otlp_full_backlog(world: World) -> ClientResponse:
    assert (await otlp(otlp_logs(records=8))(world)).status == 200
    return await otlp(otlp_logs(records=3, body="more"))(world)


SCENARIOS = [
    # POST /publish
    Scenario("publish one event", "POST", "/publish", 202, publish(event())),
    Scenario("publish an array", "POST", "/publish", 202, publish([event("1"), event("2")]),
             check=lambda body: body == {"accepted": 2}),
    Scenario("publish an envelope", "POST", "/publish", 202,
             publish({"events": [event("1"), event("2")]})),
    Scenario("publish with a charset", "POST", "/publish", 202,
             publish(event(), "application/json; charset=utf-8")),
    Scenario("publish while postgresql is down", "POST", "/publish", 202, publish(event()),
             variant=postgres_down),
    Scenario("publish malformed json", "POST", "/publish", 400, publish(b'{"topic": "a",'),
             error="invalid_json"),
    Scenario("publish a NaN literal", "POST", "/publish", 400,
             publish(orjson.dumps(event()).replace(b'"info"', b"NaN")),
             error="invalid_json"),
    Scenario("publish an empty array", "POST", "/publish", 400, publish([]),
             error="invalid_body"),
    Scenario("publish a string", "POST", "/publish", 400, publish("text"), error="invalid_body"),
    Scenario("publish an envelope with another field", "POST", "/publish", 400,
             publish({"events": [event()], "extra": 1}), error="invalid_body"),
    Scenario("publish too many events", "POST", "/publish", 413,
             publish([event(str(i)) for i in range(4)]), variant=limits(max_batch_events=3),
             error="too_many_events"),
    Scenario("publish a body over the limit", "POST", "/publish", 413,
             publish(event(payload={"blob": "x" * 2000})), variant=limits(max_body_bytes=1000),
             error="body_too_large"),
    Scenario("publish a streamed body over the limit", "POST", "/publish", 413,
             a_streamed_body_over_the_limit, variant=limits(max_body_bytes=1000),
             error="body_too_large"),
    Scenario("publish an event over the limit", "POST", "/publish", 413,
             publish([event("1"), event("2", payload={"blob": "x" * 2000})]),
             variant=limits(max_event_bytes=1000), error="event_too_large",
             check=lambda body: [p["index"] for p in body["details"]] == [1]),
    Scenario("publish plain text", "POST", "/publish", 415, publish(event(), "text/plain"),
             error="unsupported_media_type"),
    Scenario("publish an octet stream", "POST", "/publish", 415,
             publish(event(), "application/octet-stream"), error="unsupported_media_type"),
    Scenario("publish schema violations", "POST", "/publish", 422,
             publish([event("ok"), event("t", timestamp="yesterday"), event("p", payload=[1]),
                      event("x", extra=True), 42, {"topic": "auth"}, event("y" * 256)]),
             error="invalid_event",
             check=lambda body: {p["index"] for p in body["details"]} == {1, 2, 3, 4, 5, 6}),
    Scenario("publish too many topics", "POST", "/publish", 422, a_topic_past_the_limit,
             variant=limits(max_topics=2), error="too_many_topics",
             check=lambda body: problems(body) == [(1, "/topic")]),
    Scenario("publish a body that stops coming", "POST", "/publish", 408,
             a_body_that_stops_coming("/publish", b"["), error="request_timeout"),
    Scenario("publish while redis is down", "POST", "/publish", 503, publish(event()),
             variant=redis_down, error="broker_unavailable", retry_after="1"),
    Scenario("publish over the backlog limit", "POST", "/publish", 503, a_full_backlog,
             variant=limits(max_backlog=10), error="backlog_full", retry_after="2"),
    Scenario("publish without a key", "POST", "/publish", 401, publish(event()), key=None,
             error="unauthorized"),
    Scenario("publish with another scheme", "POST", "/publish", 401,
             publish(event(), key=literally("Basic dXNlcjpwYXNz")), error="unauthorized"),
    Scenario("publish with a read key", "POST", "/publish", 403,
             publish(event(), key=a_key(scopes=["read"])), error="forbidden",
             check=lambda body: body["details"] == []),
    Scenario("publish to a topic outside the key's", "POST", "/publish", 403,
             publish([event("1", topic="auth"), event("2", topic="billing")],
                     key=a_key(topics=["auth"])), error="forbidden",
             check=lambda body: problems(body) == [(1, "/topic")]),
    Scenario("publish from a source the key is not bound to", "POST", "/publish", 403,
             publish([event("1", source="svc-pay")], key=a_key(source="svc-login")),
             error="forbidden", check=lambda body: problems(body) == [(0, "/source")]),
    Scenario("publish over the key's rate", "POST", "/publish", 429, over_the_rate,
             error="rate_limited", retry_after="2"),
    Scenario("publish before the keys were ever read", "POST", "/publish", 503,
             publish(event()), variant=keys_never_read, error="keys_unavailable",
             retry_after="1"),
    # POST /v1/logs
    Scenario("otlp logs in json", "POST", "/v1/logs", 200, otlp(otlp_logs(records=2)),
             check=lambda body: body == {}),
    Scenario("otlp logs in protobuf", "POST", "/v1/logs", 200,
             otlp(otlp_logs(body="nul \x00"), PROTOBUF)),
    Scenario("otlp logs with a rejected record", "POST", "/v1/logs", 200,
             otlp(otlp_logs("checkout", "s" * 256)),
             check=lambda body: body["partialSuccess"]["rejectedLogRecords"] == "1"),
    Scenario("otlp logs undecodable", "POST", "/v1/logs", 400, otlp(b"\xff\xff", PROTOBUF)),
    Scenario("otlp logs in broken json", "POST", "/v1/logs", 400,
             lambda world: world.client.post("/v1/logs", data=b"{",
                                             headers={"Content-Type": "application/json"}),
             check=status("invalid_body")),
    Scenario("otlp logs without a key", "POST", "/v1/logs", 401, otlp(otlp_logs()), key=None,
             error="unauthorized"),
    Scenario("otlp logs with a read key", "POST", "/v1/logs", 403,
             otlp(otlp_logs(), key=a_key(scopes=["read"])), error="forbidden"),
    Scenario("otlp logs to a topic outside the key's", "POST", "/v1/logs", 403,
             otlp(otlp_logs("checkout", "billing"), key=a_key(topics=["checkout"])),
             check=status("forbidden")),
    Scenario("otlp logs whose body stops coming", "POST", "/v1/logs", 408,
             a_body_that_stops_coming("/v1/logs", b"{"), check=status("request_timeout")),
    Scenario("otlp logs too many records", "POST", "/v1/logs", 413,
             otlp(otlp_logs(records=4)), variant=limits(max_batch_events=3),
             check=status("too_many_events")),
    Scenario("otlp logs over the body limit", "POST", "/v1/logs", 413,
             otlp(otlp_logs(records=40)), variant=limits(max_body_bytes=1000),
             check=status("body_too_large")),
    Scenario("otlp logs in plain text", "POST", "/v1/logs", 415, otlp(b"x", "text/plain"),
             check=status("unsupported_media_type")),
    Scenario("otlp logs of too many topics", "POST", "/v1/logs", 422,
             otlp(otlp_logs("checkout", "billing")), variant=limits(max_topics=1),
             check=status("too_many_topics")),
    Scenario("otlp logs over the key's rate", "POST", "/v1/logs", 429, otlp_over_the_rate,
             retry_after="2", check=status("rate_limited")),
    Scenario("otlp logs over the backlog limit", "POST", "/v1/logs", 503, otlp_full_backlog,
             variant=limits(max_backlog=10), retry_after="2", check=status("backlog_full")),
    Scenario("otlp logs while redis is down", "POST", "/v1/logs", 503, otlp(otlp_logs()),
             variant=redis_down, retry_after="1", check=status("broker_unavailable")),
    Scenario("otlp logs before the keys were ever read", "POST", "/v1/logs", 503,
             otlp(otlp_logs()), variant=keys_never_read, error="keys_unavailable",
             retry_after="1"),
    # GET /events
    Scenario("events, a full page", "GET", "/events", 200, a_full_page,
             check=lambda body: ids_of(body) == ["e0", "e1"] and body["next"] is not None),
    Scenario("events, the last page", "GET", "/events", 200, the_last_page,
             check=lambda body: ids_of(body) == ["e2"] and body["next"] is None),
    Scenario("events of one topic", "GET", "/events", 200, one_topic,
             check=lambda body: ids_of(body) == ["e0", "e2"]),
    Scenario("events of an empty store", "GET", "/events", 200, get("/events"),
             check=lambda body: body == {"events": [], "next": None}),
    Scenario("events with a limit too large", "GET", "/events", 400,
             get("/events", {"limit": "1001"}), error="invalid_parameter"),
    Scenario("events with a limit that is not a number", "GET", "/events", 400,
             get("/events", {"limit": "ten"}), error="invalid_parameter"),
    Scenario("events after a bad cursor", "GET", "/events", 400,
             get("/events", {"after": "not-a-cursor"}), error="invalid_parameter"),
    Scenario("events of an empty topic", "GET", "/events", 400, get("/events", {"topic": ""}),
             error="invalid_parameter"),
    Scenario("events with an unknown parameter", "GET", "/events", 400,
             get("/events", {"sort": "desc"}), error="invalid_parameter"),
    Scenario("events with a repeated parameter", "GET", "/events", 400,
             get("/events", [("limit", "1"), ("limit", "2")]), error="invalid_parameter"),
    Scenario("events while postgresql is down", "GET", "/events", 503, get("/events"),
             variant=postgres_down, error="store_unavailable", retry_after="1"),
    Scenario("events with an unknown key", "GET", "/events", 401,
             get("/events", key=literally(UNKNOWN_KEY)), error="unauthorized"),
    Scenario("events with a publish key", "GET", "/events", 403,
             get("/events", key=a_key(scopes=["publish"])), error="forbidden"),
    Scenario("events before the keys were ever read", "GET", "/events", 503, get("/events"),
             variant=keys_never_read, error="keys_unavailable", retry_after="1"),
    # GET /stats
    Scenario("stats", "GET", "/stats", 200, counters_with_topics,
             check=stats_of_three_and_a_copy),
    Scenario("stats of the busiest topic", "GET", "/stats", 200, the_busiest_topic,
             check=lambda body: body["topics"] == {"auth": {"unique_processed": 2,
                                                            "duplicate_dropped": 1}}
             and body["topics_total"] == 2),
    Scenario("stats of too many topics", "GET", "/stats", 400, get("/stats", {"topics": "1001"}),
             error="invalid_parameter"),
    Scenario("stats of a number of topics that is not one", "GET", "/stats", 400,
             get("/stats", {"topics": "ten"}), error="invalid_parameter"),
    Scenario("stats while redis is down", "GET", "/stats", 503, get("/stats"),
             variant=redis_down, error="broker_unavailable", retry_after="1"),
    Scenario("stats while postgresql is down", "GET", "/stats", 503, get("/stats"),
             variant=postgres_down, error="store_unavailable", retry_after="1"),
    Scenario("stats with a revoked key", "GET", "/stats", 401,
             get("/stats", key=a_revoked_key), error="unauthorized"),
    Scenario("stats with a publish key", "GET", "/stats", 403,
             get("/stats", key=a_key(scopes=["publish"])), error="forbidden"),
    Scenario("stats before the keys were ever read", "GET", "/stats", 503, get("/stats"),
             variant=keys_never_read, error="keys_unavailable", retry_after="1"),
    # the operational and page routes
    Scenario("healthz", "GET", "/healthz", 200, get("/healthz")),
    Scenario("healthz while redis and postgresql are down", "GET", "/healthz", 200,
             get("/healthz"), variant=both_down),
    Scenario("readyz", "GET", "/readyz", 200, get("/readyz"),
             check=lambda body: body == {"status": "ready",
                                         "checks": {"redis": "ok", "postgres": "ok"}}),
    Scenario("readyz while postgresql is down", "GET", "/readyz", 503, get("/readyz"),
             variant=postgres_down,
             check=lambda body: body["checks"]["postgres"].startswith("unavailable")),
    Scenario("readyz while redis is down", "GET", "/readyz", 503, get("/readyz"),
             variant=redis_down,
             check=lambda body: body["checks"]["redis"].startswith("unavailable")),
    Scenario("metrics", "GET", "/metrics", 200, get("/metrics")),
    Scenario("metrics while redis is down", "GET", "/metrics", 200, get("/metrics"),
             variant=redis_down),
    Scenario("metrics with a bearer but no key", "GET", "/metrics", 401,
             get("/metrics", key=literally("Bearer ")), error="unauthorized"),
    Scenario("metrics with a publish key", "GET", "/metrics", 403,
             get("/metrics", key=a_key(scopes=["publish"])), error="forbidden"),
    Scenario("metrics before the keys were ever read", "GET", "/metrics", 503, get("/metrics"),
             variant=keys_never_read, error="keys_unavailable", retry_after="1"),
    Scenario("healthz without a key", "GET", "/healthz", 200, get("/healthz"), key=None),
    Scenario("readyz without a key", "GET", "/readyz", 200, get("/readyz"), key=None),
    Scenario("the openapi document", "GET", "/openapi.json", 200, get("/openapi.json"),
             key=None),
    Scenario("the docs page", "GET", "/docs", 200, get("/docs"), key=None),
    Scenario("the dashboard", "GET", "/", 200, get("/"), key=None),
]


@asynccontextmanager
async def app_of(scenario: Scenario, client: Client, settings: Settings) -> AsyncIterator[Client]:
    if scenario.variant is None and scenario.key == ADMIN_KEY:
        yield client
        return
    variant = scenario.variant or (lambda same: same)
    async with api_client(variant(settings), key=scenario.key) as other:
        yield other


def check_headers(answer: ClientResponse, response: dict[str, Any]) -> None:
    """Each documented header: there when required, and its value as its schema says; each
    header that tells a client what to do (INSTRUCTIONS): documented when there."""
    documented = {name.lower(): resolve(header)
                  for name, header in response.get("headers", {}).items()}
    for name, header in documented.items():
        value = answer.headers.get(name)
        if value is None:
            assert not header.get("required"), f"the answer lacks {name}, a required header"
            continue
        schema = header["schema"]
        if schema.get("type") == "integer":
            # HTTP's delta-seconds: ASCII digits only (int() would take " 2" or "٢" too).
            assert value.isascii() and value.isdigit(), (name, value)
            Draft202012Validator(schema).validate(int(value))
        else:
            Draft202012Validator(schema).validate(value)
    for name in INSTRUCTIONS:
        assert name not in answer.headers or name.lower() in documented, (
            f"the answer carries {name}: {answer.headers[name]!r}, which is not documented")


# -- the tests -----------------------------------------------------------------------------------

def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(DOCUMENT).validate()


def test_the_event_schema_of_the_document_is_schema_event_schema_json() -> None:
    event_schema = orjson.loads(SCHEMA_FILE.read_bytes())
    del event_schema["$schema"], event_schema["$id"]
    assert DOCUMENT["components"]["schemas"]["Event"] == event_schema


def test_the_document_has_exactly_the_routes_of_the_app() -> None:
    app = create_app(Settings.from_env({}))
    # HEAD comes with every GET; the catch-all routes (method "*") only answer 404 and 405.
    routes = {(route.method, route.resource.canonical)
              for route in app.router.routes()
              if route.method not in ("HEAD", "*") and route.resource is not None}
    assert {(method, path) for method, path, _ in operations()} == routes


def test_every_error_response_uses_the_one_error_schema() -> None:
    error = DOCUMENT["components"]["schemas"]["Error"]
    assert error["additionalProperties"] is False
    assert set(error["required"]) == set(error["properties"]) == {"error", "message", "details"}
    for method, path, operation in operations():
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            schema = resolve(response)["content"]["application/json"]["schema"]
            if path == "/v1/logs" and status != "401":
                # OTLP answers errors with a google.rpc.Status; the key check, which comes
                # before the route's own, with ours (401 only ours).
                assert schema in (OTLP_STATUS_REF, {"oneOf": [ERROR_REF, OTLP_STATUS_REF]}), (
                    method, path, status)
            elif (method, path, status) == ("GET", "/readyz", "503"):
                # Not ready is an answer, not an error: the same body as 200, naming the checks.
                assert schema == {"$ref": "#/components/schemas/Readiness"}
            else:
                assert schema == ERROR_REF or schema["allOf"][0] == ERROR_REF, (
                    method, path, status)


def test_every_object_schema_is_closed_and_requires_each_of_its_properties() -> None:
    checked = 0
    for schema in schemas_in([DOCUMENT["components"]["schemas"], DOCUMENT["paths"]]):
        if schema["type"] == "object" and "properties" in schema:
            assert schema.get("additionalProperties") is False, schema
            assert set(schema["required"]) == set(schema["properties"]), schema
            checked += 1
    assert checked >= 10


def test_each_operation_asks_for_the_key_its_route_needs() -> None:
    scheme = DOCUMENT["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert DOCUMENT["security"] == [{"bearer": []}]  # keyed, unless an operation says not
    for method, path, scope, _ in ROUTES:
        operation = DOCUMENT["paths"][path][method.lower()]
        if scope is None:
            assert operation["security"] == [], path
            continue
        # The scope, or admin (the roles of a Security Requirement, OpenAPI 3.1).
        assert operation["security"] == [{"bearer": [scope]}, {"bearer": [ADMIN]}], path
        responses = operation["responses"]
        assert responses["401"] == {"$ref": "#/components/responses/Unauthorized"}, path
        assert "403" in responses and "503" in responses, path


def test_the_scenarios_produce_every_documented_status_of_every_route() -> None:
    produced = {(s.method, s.path, s.status) for s in SCENARIOS}
    assert produced == documented_statuses()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_each_answer_has_a_documented_status_content_type_headers_and_body(
        scenario: Scenario, client: Client, settings: Settings, stream: Stream,
        store: Store) -> None:
    async with app_of(scenario, client, settings) as app:
        answer = await scenario.send(World(app, stream, store, settings))
        raw = await answer.read()
    assert answer.status == scenario.status, raw
    response = documented_response(scenario.method, scenario.path, answer.status)

    assert answer.content_type in response["content"]
    check_headers(answer, response)
    if scenario.retry_after is not None:
        assert answer.headers["Retry-After"] == scenario.retry_after

    if answer.content_type != "application/json":
        assert raw
        return
    body = orjson.loads(raw)
    schema_at = (*response_at(scenario.method, scenario.path, answer.status),
                 "content", "application/json", "schema")
    validator(*schema_at).validate(body)
    if scenario.error is not None:
        assert body["error"] == scenario.error
    if scenario.check is not None:
        assert scenario.check(body), body


@pytest.mark.parametrize(("method", "path", "headers", "status", "error"), [
    ("GET", "/nope", {}, 404, "not_found"),
    ("GET", "/publish", {}, 405, "method_not_allowed"),
    ("DELETE", "/events", {}, 405, "method_not_allowed"),
    ("POST", "/publish", {"Expect": "the-impossible"}, 417, "expectation_failed"),
], ids=["an unknown path", "get on publish", "delete on events", "another expectation"])
async def test_unknown_routes_and_methods_answer_with_the_error_schema(
        client: Client, method: str, path: str, headers: dict[str, str], status: int,
        error: str) -> None:
    # Not operations of the document, so not in its paths: its description names them.
    answer = await client.request(method, path, headers=headers)
    body = await answer.json()
    assert answer.status == status
    validator("components", "schemas", "Error").validate(body)
    assert body["error"] == error
    assert f"{status} `{error}`" in DOCUMENT["info"]["description"]


VALID_BODIES = {
    "one event": event(),
    "an array": [event("1"), event("2", topic="billing")],
    "an envelope": {"events": [event("1")]},
    "an offset timestamp and an empty payload": event(timestamp="2026-11-25T11:00:00+01:00",
                                                      payload={}),
    "names of 255 characters": event("e" * 255, topic="t" * 255, source="s" * 255),
}
# The README's table: a body that is not an event, an array or an envelope, or that carries no
# event, is a 400 `invalid_body`; a body of the right shape with an event the schema refuses is
# a 422 `invalid_event`.
INVALID_BODY = (400, "invalid_body")
INVALID_EVENT = (422, "invalid_event")
INVALID_BODIES: dict[str, tuple[Any, tuple[int, str]]] = {
    "an empty array": ([], INVALID_BODY),
    "an empty envelope": ({"events": []}, INVALID_BODY),
    "an envelope with another field": ({"events": [event()], "extra": 1}, INVALID_BODY),
    "an envelope of an object": ({"events": event()}, INVALID_BODY),
    "a string": ("text", INVALID_BODY),
    "a number": (42, INVALID_BODY),
    "a number in an array": ([42], INVALID_EVENT),
    "an unknown field": (event(extra=True), INVALID_EVENT),
    "a missing field": ({k: v for k, v in event().items() if k != "source"}, INVALID_EVENT),
    "a timestamp without an offset": (event(timestamp="2026-11-25T10:00:00"), INVALID_EVENT),
    "a timestamp that is not one": (event(timestamp="yesterday"), INVALID_EVENT),
    "a payload that is not an object": (event(payload=[1]), INVALID_EVENT),
    "an empty topic": (event(topic=""), INVALID_EVENT),
    "an event id of 256 characters": (event("e" * 256), INVALID_EVENT),
    "a bad event in an envelope": ({"events": [event(), event(source=7)]}, INVALID_EVENT),
}


@pytest.mark.parametrize("body", VALID_BODIES.values(), ids=VALID_BODIES.keys())
async def test_the_request_schema_and_the_server_accept_valid_publish_bodies(
        client: Client, body: Any) -> None:
    schema = validator("paths", "/publish", "post", "requestBody", "content",
                       "application/json", "schema")
    assert schema.is_valid(body)
    assert (await post(client, body)).status == 202


@pytest.mark.parametrize(("body", "refusal"), INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
async def test_the_request_schema_and_the_server_reject_invalid_publish_bodies(
        client: Client, body: Any, refusal: tuple[int, str]) -> None:
    schema = validator("paths", "/publish", "post", "requestBody", "content",
                       "application/json", "schema")
    assert not schema.is_valid(body)
    answer = await post(client, body)
    assert (answer.status, (await answer.json())["error"]) == refusal


async def test_openapi_json_serves_the_file_byte_for_byte_as_json(client: Client) -> None:
    answer = await client.get("/openapi.json")
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert await answer.read() == OPENAPI_FILE.read_bytes()


async def test_the_docs_page_is_html_that_reads_openapi_json_and_needs_no_network(
        client: Client) -> None:
    answer = await client.get("/docs")
    html = await answer.text()
    assert answer.status == 200
    assert answer.content_type == "text/html"
    assert html == (STATIC_DIR / "docs.html").read_text()
    assert "/openapi.json" in html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
