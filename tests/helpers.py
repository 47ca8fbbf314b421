"""Small builders and waits shared by the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


def event(event_id: str = "e-1", topic: str = "auth", **fields: Any) -> dict[str, Any]:
    """A valid event; keyword arguments replace or add fields."""
    base: dict[str, Any] = {"topic": topic, "event_id": event_id,
                            "timestamp": "2026-11-25T10:00:00Z", "source": "svc-login",
                            "payload": {"level": "info", "message": "user signed in"}}
    base.update(fields)
    return base


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0,
                     what: str = "condition") -> None:
    """Poll `check` until it is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within}s")
        await asyncio.sleep(0.02)
