"""`logagg consumer`: one consumer process of the group, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import uvloop
from prometheus_client import start_http_server

from services.consumer.loop import Consumer
from shared.clients import CONSUMER, opened
from shared.settings import Settings

logger = logging.getLogger(__name__)


def run(settings: Settings, args: argparse.Namespace) -> int:
    if settings.metrics_port:
        try:
            start_http_server(settings.metrics_port)
        except OSError as error:
            # Metrics are worth a loud error, not a consumer that cannot start.
            logger.error("cannot serve /metrics on port %s: %s", settings.metrics_port, error,
                         extra={"action": "metrics_unavailable"})
    uvloop.run(consume(settings))
    return 0


async def consume(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info("consumer starting", extra={"action": "consumer_start",
                                            "consumer": settings.consumer_name})
    # PostgreSQL need not answer yet: the loop backs off until it does.
    async with opened(settings, CONSUMER, name=settings.consumer_name) as clients:
        consumer = Consumer(settings, clients.stream, clients.store)
        try:
            await consumer.run(stop)
        finally:
            logger.info("consumer stopped", extra=consumer.summary())
