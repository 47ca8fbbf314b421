"""The edge of `logagg ingest`: the listener, the cap on connections and the timeouts that bound
what one client can hold, around the app of `app.py`.

aiohttp's `run_app` gives every connection 75 s to send a request, a body all the time it
likes, and takes every connection the kernel hands it. Here, on one process:

- a new connection has HEADER_TIMEOUT_MS to send its first request's headers, a kept-alive one
  KEEPALIVE_TIMEOUT_MS after an answer to send the next one's; then it is closed, with a 408
  `request_timeout` if a request had begun (silent and idle connections are just closed);
- a body has BODY_TIMEOUT_MS, from the moment its headers are in, to arrive whole: a late one
  fails its reader with `RequestTimeout`, answered 408, and the connection is closed;
- past MAX_CONNECTIONS open connections, a new one is answered 503 `too_many_connections` at
  once (`Retry-After: 1`, `Connection: close`) and closed;
- the answer to a connection's MAX_REQUESTS_PER_CONNECTION-th request says `Connection: close`.

None of it costs a timer per request: the header and idle deadlines ride on the one timer
aiohttp keeps per connection for its keep-alive, and a body gets a timer of its own only if it
is still arriving when its headers have been read (a small batch comes in the same packets).

`RequestHandler` offers no hooks for this: `Connection` overrides its private
`_process_keepalive` and `_request_factory` and works on the keep-alive state they use
(AIOHTTP_INTERNALS). `serving` checks they exist before it serves, and tests/integration/
test_edge.py checks what they do (written against aiohttp 3.14).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast

import aiohttp
import uvloop
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from services.ingest.app import create_app
from services.ingest.errors import ApiError, json_dumps
from shared.exceptions import ConfigurationError
from shared.settings import Settings

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0  # what requests in flight get to finish after SIGTERM or SIGINT
# A refused connection waits this long at most for its client to close first, reading and
# dropping what it sends: closing with its request unread would send a reset, which may destroy
# the 503 before the client reads it. At most LINGERING_REFUSALS wait at once; past that a
# refusal is closed as soon as it is written.
REFUSAL_LINGER_S = 1.0
LINGERING_REFUSALS = 100
# File descriptors besides the connections: the listener, Redis, PostgreSQL's pool, logs.
RESERVED_FILES = 64
AIOHTTP_INTERNALS = ("_process_keepalive", "_request_factory", "_keepalive_handle",
                     "_next_keepalive_close_time", "_waiter", "_keepalive", "_force_close")


class RequestTimeout(ApiError, TimeoutError):
    """408: the body did not arrive whole within BODY_TIMEOUT_MS of its headers. The body's
    reader raises it, `errors_as_json` answers it like any `ApiError`, and the connection is
    closed after the answer. A `TimeoutError` too: that is how aiohttp, draining a body its
    handler did not read, knows to stop waiting for the rest."""

    def __init__(self, body_timeout_ms: int) -> None:
        super().__init__(408, "request_timeout",
                         f"the body did not arrive within BODY_TIMEOUT_MS ({body_timeout_ms} ms) "
                         f"of the request's headers")

    def response(self) -> web.Response:
        answer = super().response()
        answer.force_close()
        return answer


@dataclass(slots=True)
class Edge:
    """The limits of one listener, and what they turned away (logged when ingest stops)."""

    settings: Settings
    open: int = 0  # connections being served
    lingering: set[Refusal] = field(default_factory=set)  # refusals waiting for their client
    refused: int = 0
    header_timeouts: int = 0  # 408s: a request begun and its headers not finished in time
    idle_closed: int = 0  # silent or idle connections closed at their deadline
    body_timeouts: int = 0
    answers: dict[str, bytes] = field(init=False)  # the answers written without a request

    def __post_init__(self) -> None:
        s = self.settings
        self.answers = {
            "header": _raw_answer(ApiError(
                408, "request_timeout", f"the request's headers did not arrive within "
                f"HEADER_TIMEOUT_MS ({s.header_timeout_ms} ms) of the connection")),
            "keepalive": _raw_answer(ApiError(
                408, "request_timeout", f"the request's headers did not arrive within "
                f"KEEPALIVE_TIMEOUT_MS ({s.keepalive_timeout_ms} ms) of the previous answer")),
            "refused": _raw_answer(ApiError(
                503, "too_many_connections", f"this ingest process serves MAX_CONNECTIONS "
                f"({s.max_connections}) connections already; retry in a second",
                headers={"Retry-After": "1"})),
        }

    def summary(self) -> dict[str, int]:
        return {"connections_refused": self.refused, "header_timeouts": self.header_timeouts,
                "idle_closed": self.idle_closed, "body_timeouts": self.body_timeouts}


def _raw_answer(error: ApiError) -> bytes:
    """An error answer as bytes on the wire, for the moments no request object exists."""
    body = json_dumps({"error": error.error, "message": error.message,
                       "details": error.details}).encode()
    headers = {"Content-Type": "application/json; charset=utf-8",
               "Content-Length": str(len(body)), **error.headers, "Connection": "close"}
    head = f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode() + b"\r\n" + body


class Connection(RequestHandler):
    """aiohttp's HTTP/1.1 connection, with the edge's deadlines and request budget."""

    __slots__ = ("_body_timer", "_edge", "_heard", "_make_request", "_served")

    def __init__(self, edge: Edge, server: web.Server) -> None:
        settings = edge.settings
        super().__init__(server, loop=asyncio.get_running_loop(),
                         keepalive_timeout=settings.keepalive_timeout_ms / 1000,
                         access_log=None)  # type: ignore[arg-type]  # None: no access log
        self._edge = edge
        make_request = self._request_factory  # the app's: it builds `web.Request`s
        assert make_request is not None
        self._make_request = make_request
        self._request_factory = self._admit
        self._heard = False  # bytes came while no request was in hand: one has begun
        self._served = 0  # requests handed to the app
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # aiohttp gives a new connection its keep-alive timeout to send a first request.
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        deadline = self._loop.time() + self._edge.settings.header_timeout_ms / 1000
        self._next_keepalive_close_time = deadline
        self._keepalive_handle = self._loop.call_at(deadline, self._process_keepalive)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._edge.open -= 1
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._waiter is not None or not self._served:
            self._heard = True
        super().data_received(data)

    def _admit(self, message: RawRequestMessage, payload: StreamReader,
               protocol: RequestHandler, writer: AbstractStreamWriter,
               task: asyncio.Task[None]) -> BaseRequest:
        """Each request, as its headers are in: the last one a connection may carry gets
        `Connection: close`; a body still on its way gets BODY_TIMEOUT_MS to arrive."""
        self._heard = False
        self._served += 1
        if self._served >= self._edge.settings.max_requests_per_connection:
            message = message._replace(should_close=True)
        if not payload.is_eof():
            if self._body_timer is not None:
                self._body_timer.cancel()
            self._body_timer = self._loop.call_later(
                self._edge.settings.body_timeout_ms / 1000, self._body_late, payload)
        return self._make_request(message, payload, protocol, writer, task)

    def _body_late(self, payload: StreamReader) -> None:
        self._body_timer = None
        if payload.is_eof() or payload.exception() is not None:
            return
        self._edge.body_timeouts += 1
        payload.set_exception(RequestTimeout(self._edge.settings.body_timeout_ms))
        self.close()  # after this answer: no other request is read on this connection

    def _process_keepalive(self) -> None:
        """aiohttp's own, which closes a connection still waiting for a request at its
        deadline; but a request begun there gets a 408 first."""
        self._keepalive_handle = None
        if self._force_close or not self._keepalive:
            return
        deadline = self._next_keepalive_close_time
        if self._loop.time() < deadline:  # an answer since moved the deadline on
            self._keepalive_handle = self._loop.call_at(deadline, self._process_keepalive)
            return
        if self._waiter is None or self._waiter.done():  # a request is in hand
            return
        if self._heard and self.transport is not None:
            self._edge.header_timeouts += 1
            self.transport.write(self._edge.answers["keepalive" if self._served else "header"])
        else:
            self._edge.idle_closed += 1
        self.force_close()


class Refusal(asyncio.Protocol):
    """A connection past MAX_CONNECTIONS: answered 503 at once, then closed."""

    def __init__(self, edge: Edge) -> None:
        self._edge = edge
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        transport.write(self._edge.answers["refused"])
        if len(self._edge.lingering) >= LINGERING_REFUSALS or not transport.can_write_eof():
            transport.close()
            return
        self._edge.lingering.add(self)
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, self.close)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # the request we will not serve, read so that closing sends no reset

    def eof_received(self) -> bool:
        return False  # the client closed its side: close ours

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
        self._edge.lingering.discard(self)


class EdgeSite(web.BaseSite):
    """A TCP listener (SO_REUSEPORT: several ingest processes may share the port, the kernel
    spreads connections) whose connections are served up to MAX_CONNECTIONS, refused past it."""

    __slots__ = ("_bound", "_host", "_http", "_port", "edge")

    def __init__(self, runner: web.AppRunner, edge: Edge, host: str, port: int) -> None:
        super().__init__(runner)
        self.edge = edge
        self._host = host
        self._port = port
        self._http: web.Server | None = None
        self._bound: int | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The port listened on (the one the kernel chose, if INGEST_PORT is 0)."""
        return self._port if self._bound is None else self._bound

    async def start(self) -> None:
        await super().start()
        self._http = self._runner.server
        listening = await asyncio.get_running_loop().create_server(
            self._accept, self._host, self._port, backlog=self._backlog, reuse_port=True)
        self._server = listening
        self._bound = listening.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await super().stop()
        for refusal in list(self.edge.lingering):
            refusal.close()

    def _accept(self) -> asyncio.Protocol:
        """The protocol of a connection just accepted. It is counted now, not once made: the
        loop may accept a burst of connections before it makes any of them."""
        edge = self.edge
        assert self._http is not None
        if edge.open >= edge.settings.max_connections:
            edge.refused += 1
            return Refusal(edge)
        connection = Connection(edge, self._http)
        edge.open += 1  # and one less when it is lost
        return connection


@asynccontextmanager
async def serving(app: web.Application, settings: Settings) -> AsyncIterator[EdgeSite]:
    """`app` served behind the edge on INGEST_HOST:INGEST_PORT while the block runs; then
    stopped gracefully: no more connections, idle ones closed, requests in flight given
    SHUTDOWN_TIMEOUT_S to finish, and last the app's cleanup contexts (Redis, PostgreSQL)."""
    missing = [name for name in AIOHTTP_INTERNALS if not hasattr(RequestHandler, name)]
    if missing:
        raise ConfigurationError(f"aiohttp {aiohttp.__version__} has no RequestHandler."
                                 f"{', '.join(missing)}: the edge needs the aiohttp it was "
                                 f"written for (3.14)")
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = EdgeSite(runner, Edge(settings), settings.ingest_host, settings.ingest_port)
        await site.start()
        yield site
    finally:
        await runner.cleanup()


def serve(settings: Settings) -> Edge:
    """Serve the API until SIGTERM or SIGINT, then stop gracefully (`serving`); return the
    edge, with what it turned away."""
    ensure_file_limit(settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_until_signalled(settings))


async def _until_signalled(settings: Settings) -> Edge:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serving(create_app(settings), settings) as site:
        await stop.wait()
    return site.edge


def ensure_file_limit(settings: Settings) -> None:
    """Make room for MAX_CONNECTIONS connections, the refusals that linger, and the rest: raise
    the soft limit on open files if it is lower, or refuse to start if the hard limit is. (At
    the limit, the loop would stop accepting anyone, logging errors, instead of answering 503.)
    """
    needed = settings.max_connections + LINGERING_REFUSALS + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigurationError(
            f"MAX_CONNECTIONS ({settings.max_connections}) needs {needed} open files, and "
            f"this process may open {hard} at most (ulimit -Hn): lower MAX_CONNECTIONS or raise "
            f"the limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    logger.info("open files limit raised", extra={"action": "file_limit_raised",
                                                 "from": soft, "to": needed})
