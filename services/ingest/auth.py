"""Who may do what (SPEC §3a): the `Authorization: Bearer <key>` of every request but the
health checks and static pages, checked against the keys this process holds in memory.

The keys live in PostgreSQL; `KeyRing.keep_fresh` polls a version number every KEYS_REFRESH_MS
and reloads them when it moved, so a request costs a SHA-256 and a dict lookup, never a query,
and a revoked key stops working within about KEYS_REFRESH_MS. While PostgreSQL is unreachable
the ring keeps the keys it last read (ingest keeps accepting events through a store outage) and
`logagg_keys_age_seconds` grows; an ingest that started without ever reading them answers 503
`keys_unavailable`, never 401, so that clients retry instead of giving up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import hdrs, web

from services.ingest.errors import ApiError
from services.ingest.keys import KEYRING
from shared.exceptions import Unavailable
from shared.keys import ApiKey, could_be_a_key, digest
from shared.metrics import AUTH_REFUSED, KEYS_AGE
from shared.store import Store

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_KEY = web.RequestKey("api_key", ApiKey)


class KeyRing:
    """The live keys, by digest, as this process last read them from the store."""

    def __init__(self, store: Store, refresh_s: float) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._keys: dict[bytes, ApiKey] | None = None  # None: never read yet
        self._version: int | None = None
        self.read_at = time.monotonic()
        KEYS_AGE.set_function(lambda: time.monotonic() - self.read_at)

    async def refresh(self) -> None:
        """Read the keys again if they changed since the last reading."""
        version = await self.store.keys_version()
        if version != self._version:
            live = await self.store.keys(live_only=True)
            # The version read before the keys: a change in between is reloaded next time.
            self._keys = {key.digest: key for key in live}
            self._version = version
        self.read_at = time.monotonic()

    async def keep_fresh(self) -> None:
        failing = False
        while True:
            try:
                await self.refresh()
                if failing:
                    logger.info("API keys read again", extra={"action": "keys_refreshed"})
                failing = False
            except Unavailable as error:
                if not failing:
                    logger.warning("cannot read the API keys; keeping those last read",
                                   extra={"action": "keys_stale", "error": str(error)})
                failing = True
            await asyncio.sleep(self.refresh_s)

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The live key a request's `Authorization` header presents, or 401 (503 before the
        keys were ever read)."""
        if self._keys is None:
            raise ApiError(503, "keys_unavailable", "the API keys could not be read yet; "
                           "retry shortly", headers={"Retry-After": "1"})
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip(" \t"):
            raise _unauthorized("send the key as `Authorization: Bearer <key>`")
        secret = secret.strip(" \t")  # HTTP whitespace; not Unicode's
        # Only what could be a key is hashed: a header may hold any bytes (aiohttp hands
        # undecodable ones over as surrogates).
        key = self._keys.get(digest(secret)) if could_be_a_key(secret) else None
        if key is None:
            raise _unauthorized("unknown or revoked key")
        return key


def _unauthorized(why: str) -> ApiError:
    AUTH_REFUSED.labels(status="401").inc()
    return ApiError(401, "unauthorized", why,
                    headers={"WWW-Authenticate": 'Bearer realm="logagg"'})


def requires(scope: str, handler: Handler) -> Handler:
    """`handler`, run only for a key with `scope` (any request when AUTH=off); the key is
    then `request[API_KEY]`, for the checks that need the request's content."""
    async def guarded(request: web.Request) -> web.StreamResponse:
        key = authorized(request, scope)
        if key is not None:
            request[API_KEY] = key
        return await handler(request)

    return guarded


def authorized(request: web.Request, scope: str) -> ApiKey | None:
    """The request's key if it has `scope` (None when AUTH=off), else a 401 or 403."""
    ring = request.app[KEYRING]  # None: AUTH=off
    if ring is None:
        return None
    key = ring.authenticate(request.headers.get(hdrs.AUTHORIZATION))
    if not key.may(scope):
        raise forbidden(f"this key lacks the {scope!r} scope (it has {', '.join(key.scopes)})")
    return key


def forbidden(message: str, details: Sequence[dict[str, Any]] = ()) -> ApiError:
    AUTH_REFUSED.labels(status="403").inc()
    return ApiError(403, "forbidden", message, details=list(details))


def check_events(request: web.Request, events: Sequence[dict[str, Any]]) -> None:
    """403 unless the request's key may publish every one of `events` (topics, source)."""
    key = request.get(API_KEY)
    if key is None:
        return
    refused = key.refusals(events)
    if refused:
        bad = len({problem["index"] for problem in refused})
        raise forbidden(f"{bad} event(s) are outside this key's limits; none was accepted",
                        refused)


def check_topic(request: web.Request, topic: str | None) -> None:
    """403 unless the request's key may read `topic` (None: every topic, which a key limited
    to some topics may not)."""
    key = request.get(API_KEY)
    if key is None or key.topics is None:
        return
    if topic is None:
        raise forbidden(f"this key may read only the topics {', '.join(key.topics)}: name one "
                        f"with ?topic=")
    if not key.may_use_topic(topic):
        raise forbidden(f"this key may not read topic {topic!r}")


def rate_limited(wait_s: float) -> ApiError:
    AUTH_REFUSED.labels(status="429").inc()
    return ApiError(429, "rate_limited",
                    f"over this key's rate; retry in {wait_s:.2f} s; none was accepted",
                    headers={"Retry-After": str(max(1, math.ceil(wait_s)))})
