"""Thin request handlers: parse and check the request, call the domain, shape the answer.

An outage of Redis or PostgreSQL (`Unavailable`) is not handled here: it goes up to
`middlewares.errors_as_json`, which answers 503 for every route alike; but for /v1/logs,
which answers its errors as OTLP says (`otlp_logs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.ingest import otlp
from services.ingest.auth import API_KEY, check_events, check_topic, rate_limited
from services.ingest.bodies import read_events
from services.ingest.errors import ApiError, json_dumps, unavailable
from services.ingest.keys import BACKLOG, RATE_LIMITS, SETTINGS, STARTED, STORE, STREAM
from services.ingest.topics import admit_topics
from shared import cursor, snapshot
from shared.exceptions import BrokerUnavailable, InvalidCursor, StoreUnavailable, Unavailable
from shared.metrics import (
    EVENTS_ACCEPTED,
    PUBLISH_SECONDS,
    STREAM_MEMORY,
    record_alarms,
    record_group_state,
)
from shared.paths import OPENAPI_FILE, STATIC_DIR

logger = logging.getLogger(__name__)

MAX_PAGE = 1000
LIMIT = re.compile(r"[0-9]{1,6}")
# Topics /stats lists, the busiest first: every open dashboard asks each second, so the answer
# stays the same small size whatever the number of topics (`topics_total` counts them all).
STATS_TOPICS = 100
MAX_STATS_TOPICS = 1000


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=json_dumps)


async def publish(request: web.Request) -> web.Response:
    """Parse the request into valid events, then append them all, or none."""
    started = time.perf_counter()
    batch = await read_events(request, request.app[SETTINGS])
    await enqueue(request, batch.events, batch.serialized, started)
    return _json({"accepted": len(batch.events)}, status=202)


async def enqueue(request: web.Request, events: list[dict[str, Any]], serialized: list[bytes],
                  started: float) -> None:
    """The one way valid events go in, from /publish and /v1/logs alike: the key's limits and
    rate, the topic limit, then the stream; all or none."""
    await admit(request, events)
    await admit_topics(request.app, events)
    await append(request.app, serialized)
    EVENTS_ACCEPTED.inc(len(events))
    PUBLISH_SECONDS.observe(time.perf_counter() - started)


async def otlp_logs(request: web.Request) -> web.Response:
    """OTLP/HTTP logs (services/ingest/otlp.py): the valid records appended, all or none; the
    others counted in `partial_success`. Errors as OTLP answers them, in the request's
    encoding."""
    media_type = otlp.PROTOBUF if request.content_type == otlp.PROTOBUF else otlp.JSON
    try:
        return await _otlp_logs(request, otlp.encoding(request))
    except ApiError as error:
        refusal = error
    except Unavailable as error:
        refusal = unavailable(error)
    except web.HTTPRequestEntityTooLarge:
        refusal = _body_too_large(request.app[SETTINGS].max_body_bytes)
    except web.RequestPayloadError as error:  # e.g. `Content-Encoding: gzip` over plain bytes
        refusal = ApiError(400, "unreadable_body", f"the body could not be read: {error}")
    response = otlp.error_answer(refusal, media_type)
    if refusal.status == 408:  # the body is still coming: no other request on this connection
        response.force_close()
    return response


async def _otlp_logs(request: web.Request, media_type: str) -> web.Response:
    started = time.perf_counter()
    settings = request.app[SETTINGS]
    if (request.content_length or 0) > settings.max_body_bytes:
        raise _body_too_large(settings.max_body_bytes)
    message, hints = otlp.read(await request.read(), media_type)
    records = otlp.count(message)
    if records > settings.max_batch_events:
        raise ApiError(413, "too_many_events",
                       f"{records} log records is over MAX_BATCH_EVENTS "
                       f"({settings.max_batch_events}): split the batch")
    found = otlp.records(message, settings, hints)
    if found.events:
        await enqueue(request, found.events, found.serialized, started)
    return otlp.answer(otlp.success(found.rejected, found.problems), media_type)


def _body_too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large",
                    f"the body (decompressed) is over MAX_BODY_BYTES ({limit} bytes)")


async def admit(request: web.Request, events: list[dict[str, Any]]) -> None:
    """Whether the request's key may publish these valid events: 403 for one outside its
    topics or source, 429 over its rate (SPEC §3a). Nothing is enqueued either way."""
    check_events(request, events)
    key = request.get(API_KEY)
    if key is not None:
        wait_s = await request.app[RATE_LIMITS].wait_for(key, len(events))
        if wait_s:
            raise rate_limited(wait_s)


async def append(app: web.Application, events: list[bytes]) -> None:
    """Append valid, serialized events to the stream, unless the backlog is full (503
    `backlog_full`)."""
    backlog, stream = app[BACKLOG], app[STREAM]
    if backlog.stale(time.monotonic()):
        pending = await stream.pending() if backlog.limit else 0
        memory = 0
        if backlog.bytes_limit:
            memory = await stream.memory_usage()
            STREAM_MEMORY.set(memory)
        backlog.refreshed(pending, time.monotonic(), memory)
    size = sum(map(len, events))
    if not backlog.admits(len(events), size):
        over = (f"MAX_BACKLOG_BYTES ({backlog.bytes_limit} bytes of stream memory)"
                if backlog.over_bytes(size) else f"MAX_BACKLOG ({backlog.limit} events)")
        raise ApiError(503, "backlog_full", f"the backlog is over {over}; retry later",
                       headers={"Retry-After": "2"})
    await stream.publish(events)
    backlog.added(len(events), size)


async def list_events(request: web.Request) -> web.Response:
    """A page of stored events. Only positions the group has settled are shown (SPEC §3: pages
    never skip): below the first entry still in flight, or without a group, below the floor."""
    topic, after, limit = _page_query(request.query)
    check_topic(request, topic)
    state = await request.app[STREAM].group_state()
    store = request.app[STORE]
    below = state.settled_below if state.exists else None
    rows = await store.events_page(topic=topic, after=after, limit=limit,
                                   below=below or await store.floor())
    following = cursor.encode(rows[-1].position) if len(rows) == limit else None
    return _json({"events": [row.as_json() for row in rows], "next": following})


def _page_query(query: Any) -> tuple[str | None, Any, int]:
    unknown = sorted(set(query) - {"topic", "limit", "after"})
    if unknown:
        raise _bad_query(unknown[0], "is not a parameter of /events (topic, limit, after)")
    for name in query:
        if len(query.getall(name)) > 1:
            raise _bad_query(name, "is given more than once")
    topic = query.get("topic")
    if topic is not None and not 1 <= len(topic) <= 255:
        raise _bad_query("topic", "must be 1 to 255 characters")
    if topic is not None and "\x00" in topic:
        raise _bad_query("topic", "must not contain the NUL character")
    raw_limit = query.get("limit", "100")
    # A few ASCII digits only: str.isdigit() also says yes to "²", which int() refuses, and
    # int() refuses strings of thousands of digits.
    if not LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise _bad_query("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    after = None
    if "after" in query:
        try:
            after = cursor.decode(query["after"])
        except InvalidCursor as error:
            raise _bad_query("after", str(error)) from None
    return topic, after, int(raw_limit)


def _bad_query(name: str, why: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"{name!r} {why}",
                    details=[{"parameter": name, "message": why}])


async def stats(request: web.Request) -> web.Response:
    """The counters, the `?topics=N` busiest topics (default STATS_TOPICS) and how many topics
    there are. The totals count every topic, and "" too (letters of entries whose topic could
    not be read), which is never listed."""
    top = _stats_query(request.query)
    look = await snapshot.take(request.app[STREAM], request.app[STORE], topics=top)
    record_alarms(look.alarms)
    counts = look.counts
    key = request.get(API_KEY)  # a key limited to topics sees only those listed
    return _json({
        "received": look.received,
        "unique_processed": counts.total("unique_processed"),
        "duplicate_dropped": counts.total("duplicate_dropped"),
        "dead_lettered": counts.total("dead_lettered"),
        "pending": look.pending,
        "uptime_seconds": round(time.monotonic() - request.app[STARTED], 3),
        "topics": {
            topic: {"unique_processed": c.unique_processed,
                    "duplicate_dropped": c.duplicate_dropped}
            for topic, c in counts.topics.items()
            if key is None or key.may_use_topic(topic)
        },
        "topics_total": counts.topics_total,
        "alarms": [alarm.as_json() for alarm in look.alarms],
    })


def _stats_query(query: Any) -> int:
    unknown = sorted(set(query) - {"topics"})
    if unknown:
        raise _bad_query(unknown[0], "is not a parameter of /stats (topics)")
    if len(query.getall("topics", [])) > 1:
        raise _bad_query("topics", "is given more than once")
    raw = query.get("topics", str(STATS_TOPICS))
    if not LIMIT.fullmatch(raw) or int(raw) > MAX_STATS_TOPICS:
        raise _bad_query("topics", f"must be a whole number from 0 to {MAX_STATS_TOPICS}")
    return int(raw)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = {"redis": _check(request.app[STREAM].ping()),
              "postgres": _check(request.app[STORE].ping())}
    results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
    ready = all(result == "ok" for result in results.values())
    return _json({"status": "ready" if ready else "not_ready", "checks": results},
                 status=200 if ready else 503)


async def _check(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, timeout=2)
    except (Unavailable, TimeoutError, OSError) as error:
        return f"unavailable: {type(error).__name__}"
    return "ok"


async def metrics(request: web.Request) -> web.Response:
    # The group's gauges are read now, so a scrape sees the current backlog; a broker outage
    # leaves the last values, and the scrape still succeeds.
    with contextlib.suppress(BrokerUnavailable):
        record_group_state(await request.app[STREAM].group_state())
        STREAM_MEMORY.set(await request.app[STREAM].memory_usage())
    with contextlib.suppress(StoreUnavailable):
        record_alarms(await request.app[STORE].alarms())
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API, `schema/openapi.json`."""
    return web.Response(body=OPENAPI_FILE.read_bytes(), content_type="application/json")


def page(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler serving one self-contained HTML page from `static/` (no build step)."""
    body = (STATIC_DIR / name).read_bytes()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    return serve
