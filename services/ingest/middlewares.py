"""Middlewares of the ingest app: every answer is JSON, every answer is counted, and an outage
of Redis or PostgreSQL is a 503 on every route."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from services.ingest.errors import ApiError, unavailable
from shared.exceptions import Unavailable
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
    except Unavailable as error:
        return unavailable(error).response()
    except web.RequestPayloadError as error:
        # A body that cannot be read as sent, e.g. `Content-Encoding: gzip` over plain bytes.
        return ApiError(400, "unreadable_body", f"the body could not be read: {error}").response()
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


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` as aiohttp does it; any other expectation a JSON 417.

    aiohttp runs the expect handler before the middlewares, so its own would answer in plain
    text, and fail on a header it cannot decode.
    """
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the real answer has not started yet
        return None
    return ApiError(417, "expectation_failed",
                    "only `Expect: 100-continue` is supported").response()
