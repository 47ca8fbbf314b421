"""The one route table of the ingest API (SPEC §3).

Every path also gets a catch-all route for the other methods (a JSON 405), and the table ends
with a catch-all path (a JSON 404). So every request reaches one of our routes, each with our
`Expect` handler: aiohttp would otherwise answer unmatched requests with an `Expect` header
through its own handler, before any middleware, in plain text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from services.ingest import handlers
from services.ingest.auth import authorized, requires
from services.ingest.errors import ApiError
from services.ingest.middlewares import expect_handler
from shared.keys import PUBLISH, READ

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Method, path, the scope a key needs (None: open to all, SPEC §3a), handler.
ROUTES: list[tuple[str, str, str | None, Handler]] = [
    ("POST", "/publish", PUBLISH, handlers.publish),
    ("POST", "/v1/logs", PUBLISH, handlers.otlp_logs),
    ("GET", "/events", READ, handlers.list_events),
    ("GET", "/stats", READ, handlers.stats),
    ("GET", "/metrics", READ, handlers.metrics),
    ("GET", "/healthz", None, handlers.healthz),
    ("GET", "/readyz", None, handlers.readyz),
    ("GET", "/openapi.json", None, handlers.openapi),
    ("GET", "/docs", None, handlers.page("docs.html")),
    ("GET", "/", None, handlers.page("dashboard.html")),
]


def setup_routes(app: web.Application) -> None:
    router = app.router
    for method, path, scope, handler in ROUTES:
        add = router.add_get if method == "GET" else router.add_post
        if scope is None:
            add(path, handler, expect_handler=expect_handler)
        else:
            add(path, requires(scope, handler), expect_handler=keyed_expect_handler(scope))
        allowed = {"GET", "HEAD"} if method == "GET" else {method}
        router.add_route(hdrs.METH_ANY, path, _method_not_allowed(allowed),
                         expect_handler=expect_handler)
    router.add_route(hdrs.METH_ANY, "/{path:.*}", _not_found, expect_handler=expect_handler)


def keyed_expect_handler(scope: str) -> Callable[[web.Request], Awaitable[
        web.StreamResponse | None]]:
    """A client that asks before sending its body (`Expect: 100-continue`) learns that its key
    will not do before it uploads anything."""
    async def expect(request: web.Request) -> web.StreamResponse | None:
        try:
            authorized(request, scope)
        except ApiError as error:
            return error.response()
        return await expect_handler(request)

    return expect


def _method_not_allowed(allowed: set[str]) -> Handler:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise ApiError(405, "method_not_allowed",
                       f"{request.method} is not allowed here; use {', '.join(sorted(allowed))}",
                       headers={"Allow": ", ".join(sorted(allowed))})

    return refuse


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise ApiError(404, "not_found", f"no route for {request.path!r}")
