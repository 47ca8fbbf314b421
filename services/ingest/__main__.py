"""`logagg ingest`: serve the API until SIGTERM or SIGINT, then finish requests in flight."""

from __future__ import annotations

import argparse
import logging

import uvloop
from aiohttp import web

from services.ingest.app import create_app
from shared.settings import Settings

logger = logging.getLogger(__name__)


def run(settings: Settings, args: argparse.Namespace) -> int:
    logger.info("ingest starting", extra={"action": "ingest_start", "host": settings.ingest_host,
                                          "port": settings.ingest_port})
    # run_app turns SIGTERM/SIGINT into a graceful shutdown: stop listening, let in-flight
    # requests finish, then run the cleanup contexts that close Redis and PostgreSQL.
    web.run_app(create_app(settings), host=settings.ingest_host, port=settings.ingest_port,
                shutdown_timeout=10, print=None, access_log=None, loop=uvloop.new_event_loop(),
                # Several ingest processes may share the port; the kernel spreads connections.
                reuse_port=True)
    logger.info("ingest stopped", extra={"action": "ingest_stop"})
    return 0
