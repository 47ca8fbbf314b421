"""The ingest application: factory, resources and their lifecycle.

Redis and PostgreSQL clients are opened by `cleanup_ctx` entries in a fixed order and closed in
the reverse one; handlers find them under typed `AppKey`s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from services.ingest.backpressure import Backlog
from services.ingest.keys import BACKLOG, SETTINGS, STARTED, STORE, STREAM
from services.ingest.middlewares import count_requests, errors_as_json
from services.ingest.routes import setup_routes
from shared.db import make_pool
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream, connect

logger = logging.getLogger(__name__)



def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # Outermost first: errors become JSON answers, which are then counted.
        middlewares=[count_requests, errors_as_json],
    )
    app[SETTINGS] = settings
    app[STARTED] = time.monotonic()
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_postgres)
    setup_routes(app)
    return app


async def _redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    redis = connect(settings.redis_url)
    app[STREAM] = Stream(redis, key=settings.stream_key, group=settings.consumer_group)
    app[BACKLOG] = Backlog(app[STREAM], settings.max_backlog)
    yield
    await redis.aclose()


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    # The pool opens without waiting: ingest accepts events while PostgreSQL is down, and
    # /readyz says so.
    # A short timeout: while PostgreSQL is down, read requests get a quick 503, not a hang.
    pool = make_pool(app[SETTINGS].database_url, max_size=4, name="ingest", timeout=2.0)
    await pool.open(wait=False)
    app[STORE] = Store(pool)
    yield
    await pool.close()
