"""The ingest application: factory, resources and their lifecycle.

Redis and PostgreSQL clients are opened by one `cleanup_ctx` entry (`shared/clients.py`, which
fixes the order) and closed when the app stops; handlers find them under typed `AppKey`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from services.ingest.auth import KeyRing
from services.ingest.backpressure import Backlog
from services.ingest.keys import BACKLOG, KEYRING, RATE_LIMITS, SETTINGS, STARTED, STORE, STREAM
from services.ingest.middlewares import count_requests, errors_as_json
from services.ingest.rate_limits import RateLimits
from services.ingest.routes import setup_routes
from services.ingest.topics import TOPICS, Topics
from shared.clients import INGEST, opened
from shared.exceptions import Unavailable
from shared.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # Outermost first: errors become JSON answers, which are then counted.
        middlewares=[count_requests, errors_as_json],
    )
    app[SETTINGS] = settings
    app[STARTED] = time.monotonic()
    app[TOPICS] = Topics(settings.max_topics)
    app.cleanup_ctx.append(_clients)
    setup_routes(app)
    return app


async def _clients(app: web.Application) -> AsyncIterator[None]:
    # PostgreSQL need not answer at start: ingest accepts events while it is down, /readyz
    # says so, and reads get a quick 503.
    settings = app[SETTINGS]
    async with opened(settings, INGEST) as clients:
        app[STREAM], app[STORE] = clients.stream, clients.store
        app[BACKLOG] = Backlog(settings.max_backlog, bytes_limit=settings.max_backlog_bytes)
        app[RATE_LIMITS] = RateLimits(clients.stream.redis, settings.stream_key)
        if settings.auth == "off":
            app[KEYRING] = None
            yield
            return
        ring = app[KEYRING] = KeyRing(clients.store, settings.keys_refresh_ms / 1000)
        with contextlib.suppress(Unavailable):
            await ring.refresh()  # else keep_fresh reads them as soon as it can
        refreshing = asyncio.create_task(ring.keep_fresh(), name="keys")
        try:
            yield
        finally:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing
