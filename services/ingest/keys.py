"""Typed keys of what the ingest application holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from services.ingest.backpressure import Backlog
from services.ingest.rate_limits import RateLimits
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream

if TYPE_CHECKING:
    from services.ingest.auth import KeyRing

SETTINGS = web.AppKey("settings", Settings)
STREAM = web.AppKey("stream", Stream)
STORE = web.AppKey("store", Store)
STARTED = web.AppKey("started", float)
BACKLOG = web.AppKey("backlog", Backlog)
RATE_LIMITS = web.AppKey("rate_limits", RateLimits)
KEYRING: web.AppKey[KeyRing | None] = web.AppKey("keyring")  # None: AUTH=off
