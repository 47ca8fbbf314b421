"""Errors the API answers with: `{"error": code, "message": text, "details": [...]}` (SPEC §3).

Handlers raise `ApiError`; `middlewares.errors_as_json` turns it, aiohttp's own HTTP errors and
anything unexpected into that body, so every answer of the API is JSON.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from shared.exceptions import Unavailable


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, *,
                 details: list[Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"error": self.error, "message": self.message, "details": self.details}
        return web.json_response(body, status=self.status, headers=self.headers,
                                 dumps=json_dumps)


def json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()


def unavailable(error: Unavailable) -> ApiError:
    """503 for a dependency that did not answer (`broker_unavailable`, `store_unavailable`);
    clients retry after a second."""
    return ApiError(503, f"{error.what}_unavailable", f"{error.what} is not answering: {error}",
                    headers={"Retry-After": "1"})
