"""Middlewares of the ingest app: every answer is JSON, and every answer is counted."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.ingest.errors import ApiError
from shared.metrics import HTTP_REQUESTS

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp raises these for requests no handler saw: give them our body and a stable code.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _HTTP_CODES.get(error.status, "http_error")
        return ApiError(error.status, code, error.reason).response()
    except Exception as error:
        logger.exception("unhandled error", extra={"action": "request_failed",
                                                   "path": request.path})
        return ApiError(500, "internal_error", f"the server failed: {type(error).__name__}"
                        ).response()


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    # The route's pattern, not the path, keeps the label set small and fixed.
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    HTTP_REQUESTS.labels(route=route, status=str(response.status)).inc()
    return response
