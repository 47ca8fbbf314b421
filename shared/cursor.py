"""Opaque page cursors for GET /events.

A cursor names the stream position of the last event of a page. It is opaque to clients (base64
of a versioned text) so that its inside can change without breaking them.
"""

from __future__ import annotations

import base64
import binascii

from shared.entries import StreamId
from shared.exceptions import InvalidCursor

_VERSION = "v1:"


def encode(position: StreamId) -> str:
    return base64.urlsafe_b64encode(f"{_VERSION}{position}".encode()).decode().rstrip("=")


def decode(cursor: str) -> StreamId:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        if not text.startswith(_VERSION):
            raise ValueError(text)
        position = StreamId.parse(text[len(_VERSION):])
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidCursor() from None
    # base64 decoding skips characters outside its alphabet: only the text this server hands
    # out for that position (its padding kept or not) is one of its cursors.
    if encode(position) != cursor.rstrip("="):
        raise InvalidCursor()
    return position
