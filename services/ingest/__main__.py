"""`logagg ingest`: serve the API until SIGTERM or SIGINT, then finish requests in flight."""

from __future__ import annotations

import argparse
import logging

from services.ingest.server import serve
from shared.settings import Settings

logger = logging.getLogger(__name__)


def run(settings: Settings, args: argparse.Namespace) -> int:
    logger.info("ingest starting", extra={"action": "ingest_start", "host": settings.ingest_host,
                                          "port": settings.ingest_port})
    # The edge (services/ingest/server.py) bounds what clients hold; SIGTERM/SIGINT stop it
    # gracefully: stop listening, let in-flight requests finish, then close Redis and PostgreSQL.
    edge = serve(settings)
    logger.info("ingest stopped", extra={"action": "ingest_stop", **edge.summary()})
    return 0
