"""The edge of ingest (services/ingest/server.py): what one client can hold, and for how long.

The real app is served behind the edge on a real port, with timeouts of about a second, and
each test is a client on a raw socket, sending exactly the bytes an attacker would. Times are
asserted loosely, as bounded against unbounded (closed no earlier than the deadline and within
three times it): the machines that run the tests are shared. Before the edge, every connection
here was held 75 s or, for a trickled body, for as long as the client liked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from redis.asyncio import Redis

from services.ingest.app import create_app
from services.ingest.server import EdgeSite, serving
from shared.paths import OPENAPI_FILE
from shared.settings import Settings
from shared.stream import Stream
from tests.helpers import ADMIN_KEY, event, eventually

HEADER_S = 1.0
KEEPALIVE_S = 1.5
BODY_S = 1.0
LONG_MS = 60_000  # for tests where no deadline may strike
MAX_REQUESTS = 3

# Every request of this module is built by `request_head`, which sends the tests' key.
AUTH_HEADER = f"Authorization: Bearer {ADMIN_KEY}\r\n".encode()


def request_head(method: str, path: str, *, length: int | None = None) -> bytes:
    """A request's headers, blank line included; with `length`, those of a JSON body."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {length}"]
    return "".join(f"{line}\r\n" for line in lines).encode() + AUTH_HEADER + b"\r\n"


def request(method: str, path: str, body: bytes | None = None) -> bytes:
    length = None if body is None else len(body)
    return request_head(method, path, length=length) + (body or b"")


def publish_request(*events: dict[str, Any]) -> bytes:
    return request("POST", "/publish", orjson.dumps(list(events)))


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {name.strip().lower(): value.strip()
               for name, value in (line.split(":", 1) for line in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return Answer(int(status_line.split(" ")[1]), headers, body)


class Client:
    """A raw connection to the edge, with the time it was made."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.since = time.monotonic()

    @classmethod
    async def connect(cls, site: EdgeSite) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", site.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def ask(self, data: bytes) -> Answer:
        await self.send(data)
        return await read_answer(self.reader)

    async def closed_by_server(self, within_s: float) -> bytes:
        """Read until the server closes the connection (what it sent meanwhile); fail if it
        holds it past `within_s`."""
        async with asyncio.timeout(within_s):
            return await self.reader.read()

    def held(self) -> float:
        return time.monotonic() - self.since

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@asynccontextmanager
async def edge(settings: Settings, **limits: int) -> AsyncIterator[EdgeSite]:
    """The ingest app behind the edge on a free port of the loopback."""
    limits = {"header_timeout_ms": int(HEADER_S * 1000),
              "keepalive_timeout_ms": int(KEEPALIVE_S * 1000),
              "body_timeout_ms": int(BODY_S * 1000),
              "max_requests_per_connection": MAX_REQUESTS, **limits}
    served = dataclasses.replace(settings, ingest_host="127.0.0.1", ingest_port=0, **limits)
    served.check()
    async with serving(create_app(served), served) as site:
        yield site


@asynccontextmanager
async def connected(site: EdgeSite) -> AsyncIterator[Client]:
    client = await Client.connect(site)
    try:
        yield client
    finally:
        await client.close()


async def trickle(client: Client, byte: bytes = b" ", every_s: float = 0.05) -> None:
    """A byte now and then, forever: the server sees progress, never the end."""
    with contextlib.suppress(ConnectionError):
        while True:
            await client.send(byte)
            await asyncio.sleep(every_s)


def assert_request_timeout(data: bytes, limit: str) -> None:
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert b"\r\nConnection: close" in head, head
    answer = orjson.loads(body)
    assert answer["error"] == "request_timeout" and answer["details"] == [], answer
    assert limit in answer["message"], answer


# ----------------------------------------------------------------------------------------------
# Headers


async def test_half_sent_headers_get_a_408_and_the_connection_is_closed_at_header_timeout(
        settings: Settings) -> None:
    # A long KEEPALIVE_TIMEOUT_MS: only HEADER_TIMEOUT_MS can end this in time.
    async with edge(settings, keepalive_timeout_ms=LONG_MS) as site, connected(site) as client:
        # Slowloris: headers begun, a byte of a header's name now and then, never the end.
        await client.send(b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sender = asyncio.create_task(trickle(client, b"X", every_s=0.2))
        try:
            data = await client.closed_by_server(within_s=3 * HEADER_S)
        finally:
            sender.cancel()
        assert client.held() >= HEADER_S - 0.05
        assert_request_timeout(data, "HEADER_TIMEOUT_MS (1000 ms)")
        assert site.edge.header_timeouts == 1


async def test_a_silent_connection_is_closed_at_header_timeout_without_an_answer(
        settings: Settings) -> None:
    async with edge(settings, keepalive_timeout_ms=LONG_MS) as site, connected(site) as client:
        assert await client.closed_by_server(within_s=3 * HEADER_S) == b""
        assert client.held() >= HEADER_S - 0.05
        assert site.edge.idle_closed == 1


async def test_an_idle_kept_alive_connection_is_closed_at_keepalive_timeout(
        settings: Settings) -> None:
    async with edge(settings) as site, connected(site) as client:
        assert (await client.ask(request("GET", "/healthz"))).status == 200
        answered = time.monotonic()
        assert await client.closed_by_server(within_s=3 * KEEPALIVE_S) == b""
        # KEEPALIVE_TIMEOUT_MS from the answer, not HEADER_TIMEOUT_MS.
        assert time.monotonic() - answered >= KEEPALIVE_S - 0.05


async def test_half_sent_headers_on_a_kept_alive_connection_get_a_408_at_keepalive_timeout(
        settings: Settings) -> None:
    async with edge(settings) as site, connected(site) as client:
        assert (await client.ask(request("GET", "/healthz"))).status == 200
        answered = time.monotonic()
        await client.send(b"GET /stats HTTP/1.1\r\n")
        data = await client.closed_by_server(within_s=3 * KEEPALIVE_S)
        assert time.monotonic() - answered >= KEEPALIVE_S - 0.05
        assert_request_timeout(data, "KEEPALIVE_TIMEOUT_MS (1500 ms)")


# ----------------------------------------------------------------------------------------------
# Bodies


async def test_a_trickled_body_gets_a_408_at_body_timeout_and_nothing_is_enqueued(
        settings: Settings, stream: Stream, redis: Redis) -> None:
    body = orjson.dumps([event("late")])
    async with edge(settings) as site:
        async with connected(site) as client:
            await client.send(request_head("POST", "/publish", length=len(body) + 10_000))
            headers_in = time.monotonic()
            await client.send(body[:-1])
            sender = asyncio.create_task(trickle(client))
            try:
                data = await client.closed_by_server(within_s=3 * BODY_S)
            finally:
                sender.cancel()
            assert time.monotonic() - headers_in >= BODY_S - 0.05
            assert_request_timeout(data, "BODY_TIMEOUT_MS (1000 ms)")
        assert site.edge.body_timeouts == 1
        assert await redis.xlen(settings.stream_key) == 0
        assert await stream.received() == 0
        # The same body sent whole, in pieces within the limit, is accepted.
        async with connected(site) as client:
            await client.send(request_head("POST", "/publish", length=len(body)))
            for start in range(0, len(body), 20):
                await client.send(body[start:start + 20])
                await asyncio.sleep(0.01)
            assert (await read_answer(client.reader)).status == 202
    assert await stream.received() == 1


async def test_a_body_no_handler_reads_cannot_hold_the_connection_past_body_timeout(
        settings: Settings) -> None:
    """`GET /healthz` answers without reading a body; aiohttp would then read and drop the rest
    for up to 10 s (its lingering close). The body's deadline cuts that short too."""
    async with edge(settings) as site, connected(site) as client:
        await client.send(request_head("GET", "/healthz", length=1_000_000) + b"[")
        headers_in = time.monotonic()
        sender = asyncio.create_task(trickle(client))
        try:
            assert (await read_answer(client.reader)).status == 200
            assert await client.closed_by_server(within_s=3 * BODY_S) == b""
        finally:
            sender.cancel()
        assert time.monotonic() - headers_in >= BODY_S - 0.05


# ----------------------------------------------------------------------------------------------
# Connections


async def test_past_max_connections_a_new_connection_gets_a_503_and_the_others_still_work(
        settings: Settings) -> None:
    long = {"header_timeout_ms": LONG_MS, "keepalive_timeout_ms": LONG_MS,
            "max_requests_per_connection": 1000}
    async with edge(settings, max_connections=3, **long) as site:
        held = [await Client.connect(site) for _ in range(3)]
        try:
            for client in held:
                assert (await client.ask(request("GET", "/healthz"))).status == 200
            async with connected(site) as extra:
                # A client that sends its request at once still reads the refusal.
                refusal = await extra.ask(request("GET", "/healthz"))
                assert await extra.closed_by_server(within_s=2) == b""
                assert extra.held() < 2
            assert refusal.status == 503
            assert refusal.headers["retry-after"] == "1"
            assert refusal.headers["connection"] == "close"
            assert refusal.json()["error"] == "too_many_connections"
            assert "MAX_CONNECTIONS (3)" in refusal.json()["message"]
            for client in held:
                assert (await client.ask(request("GET", "/healthz"))).status == 200

            # One closes: its place is free again.
            await held.pop().close()

            async def served_again() -> bool:
                async with connected(site) as client:
                    return (await client.ask(request("GET", "/healthz"))).status == 200

            await eventually(served_again, within=10, what="a new connection served")
        finally:
            for client in held:
                await client.close()
        assert site.edge.refused >= 1


async def test_the_answer_to_the_last_request_a_connection_may_carry_closes_it(
        settings: Settings) -> None:
    async with edge(settings) as site, connected(site) as client:
        for _ in range(MAX_REQUESTS - 1):
            answer = await client.ask(request("GET", "/healthz"))
            assert answer.status == 200 and "connection" not in answer.headers
        last = await client.ask(request("GET", "/healthz"))
        assert last.status == 200 and last.headers["connection"] == "close"
        assert await client.closed_by_server(within_s=2) == b""


def test_the_openapi_document_names_the_answers_of_the_edge() -> None:
    # Not answers of one operation: the document's description names them, as 404 and 405.
    description = orjson.loads(OPENAPI_FILE.read_bytes())["info"]["description"]
    assert "408 `request_timeout`" in description
    assert "503 `too_many_connections`" in description
