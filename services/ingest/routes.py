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
from services.ingest.errors import ApiError
from services.ingest.middlewares import expect_handler

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/publish", handlers.publish),
    ("GET", "/events", handlers.list_events),
    ("GET", "/stats", handlers.stats),
    ("GET", "/healthz", handlers.healthz),
    ("GET", "/readyz", handlers.readyz),
    ("GET", "/metrics", handlers.metrics),
    ("GET", "/openapi.json", handlers.openapi),
    ("GET", "/docs", handlers.page("docs.html")),
    ("GET", "/", handlers.page("dashboard.html")),
]


def setup_routes(app: web.Application) -> None:
    router = app.router
    for method, path, handler in ROUTES:
        add = router.add_get if method == "GET" else router.add_post
        add(path, handler, expect_handler=expect_handler)
        allowed = {"GET", "HEAD"} if method == "GET" else {method}
        router.add_route(hdrs.METH_ANY, path, _method_not_allowed(allowed),
                         expect_handler=expect_handler)
    router.add_route(hdrs.METH_ANY, "/{path:.*}", _not_found, expect_handler=expect_handler)


def _method_not_allowed(allowed: set[str]) -> Handler:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise ApiError(405, "method_not_allowed",
                       f"{request.method} is not allowed here; use {', '.join(sorted(allowed))}",
                       headers={"Allow": ", ".join(sorted(allowed))})

    return refuse


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise ApiError(404, "not_found", f"no route for {request.path!r}")
