"""Request bodies of `POST /publish`: from the bytes a client sent to the events it carries.

`read_events` checks the request in the order that costs least first (content type, declared
size, JSON, shape, count, the schema, then the size of each event) and answers the first
problem as an `ApiError` naming what is wrong; what comes back is every event, valid, and
serialized as it goes into the stream, ready to append.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from aiohttp import web

from services.ingest.errors import ApiError
from shared import validation
from shared.settings import Settings


class Batch(NamedTuple):
    events: list[dict[str, Any]]  # valid events
    serialized: list[bytes]  # each as the stream keeps it


class BodyShapeError(ValueError):
    """The body is JSON, but not one event, an array of events or `{"events": [...]}`."""


async def read_events(request: web.Request, settings: Settings) -> Batch:
    """The valid events of a publish request, and their serialized form for the stream, or an
    `ApiError` (400, 413, 415, 422)."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"send Content-Type: application/json, not {request.content_type!r}")
    if (request.content_length or 0) > settings.max_body_bytes:
        raise ApiError(413, "body_too_large",
                       f"the body is over MAX_BODY_BYTES ({settings.max_body_bytes} bytes)")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
    try:
        events = events_of(body)
    except BodyShapeError as error:
        raise ApiError(400, "invalid_body", str(error)) from None
    if len(events) > settings.max_batch_events:
        raise ApiError(413, "too_many_events",
                       f"{len(events)} events is over MAX_BATCH_EVENTS "
                       f"({settings.max_batch_events}): split the batch")
    found = validation.report(events)  # the first MAX_DETAILS problems; the rest counted
    if found.total:
        listed = found.listed
        shown = f"; the first {len(listed)} are listed" if found.total > len(listed) else ""
        raise ApiError(422, "invalid_event",
                       f"{found.events} of {len(events)} events failed validation, "
                       f"{found.total} problem(s){shown}; none was accepted", details=listed)
    # An event's size is that of the copy the stream keeps (compact JSON, as orjson writes it):
    # what a consumer will read, whatever whitespace or escapes the client sent. Serializing
    # comes after the schema, which keeps events orjson could not write (nested too deep)
    # away, and is done once, for the stream too.
    serialized = [orjson.dumps(event) for event in events]
    too_large = [{"index": index, "path": "",
                  "message": f"the event is {len(raw)} bytes of JSON, over MAX_EVENT_BYTES "
                             f"({settings.max_event_bytes})"}
                 for index, raw in enumerate(serialized) if len(raw) > settings.max_event_bytes]
    if too_large:
        raise ApiError(413, "event_too_large",
                       f"{len(too_large)} of {len(events)} events are over MAX_EVENT_BYTES "
                       f"({settings.max_event_bytes} bytes); none was accepted",
                       details=too_large)
    return Batch(events, serialized)


def events_of(body: Any) -> list[Any]:
    """The events a publish body carries, in order (SPEC §3: one, an array, or an envelope).

    An object with an `events` key is the envelope: an event cannot have that field, since the
    schema rejects unknown fields. Whether each item is a valid event is validation's business.
    """
    if isinstance(body, list):
        events = body
    elif isinstance(body, dict) and "events" in body:
        if set(body) != {"events"}:
            extra = sorted(set(body) - {"events"})
            raise BodyShapeError(f"the envelope takes only 'events', not {extra}")
        if not isinstance(body["events"], list):
            raise BodyShapeError("'events' must be an array of events")
        events = body["events"]
    elif isinstance(body, dict):
        events = [body]
    else:
        raise BodyShapeError("the body must be an event, an array of events or {\"events\": [...]}")
    if not events:
        raise BodyShapeError("the request carries no event")
    return events
