"""`logagg consumer`: one consumer process of the group, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import uvloop
from prometheus_client import start_http_server

from services.consumer.loop import Consumer
from shared.db import make_pool
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream, connect

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
    redis = connect(settings.redis_url)
    pool = make_pool(settings.database_url, max_size=1, name=settings.consumer_name)
    # Do not wait for PostgreSQL here: the loop backs off until it answers.
    await pool.open(wait=False)
    consumer = Consumer(settings, Stream(redis, key=settings.stream_key,
                                         group=settings.consumer_group), Store(pool))
    logger.info("consumer starting", extra={"action": "consumer_start",
                                            "consumer": settings.consumer_name})
    try:
        await consumer.run(stop)
    finally:
        # Fixed order: the loop has finished its batch; close the broker, then the store.
        await redis.aclose()
        await pool.close()
        logger.info("consumer stopped", extra=consumer.summary())
