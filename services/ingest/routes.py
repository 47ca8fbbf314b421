"""The one route table of the ingest API (SPEC §3)."""

from __future__ import annotations

from aiohttp import web

from services.ingest import handlers


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/publish", handlers.publish)
    app.router.add_get("/events", handlers.list_events)
    app.router.add_get("/stats", handlers.stats)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", handlers.openapi)
    app.router.add_get("/docs", handlers.page("docs.html"))
    app.router.add_get("/", handlers.page("dashboard.html"))
