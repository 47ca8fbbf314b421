"""Typed keys of what the ingest application holds."""

from __future__ import annotations

from aiohttp import web

from services.ingest.backpressure import Backlog
from shared.settings import Settings
from shared.store import Store
from shared.stream import Stream

SETTINGS = web.AppKey("settings", Settings)
STREAM = web.AppKey("stream", Stream)
STORE = web.AppKey("store", Store)
STARTED = web.AppKey("started", float)
BACKLOG = web.AppKey("backlog", Backlog)
