"""The consumer's retry policy: what to do about each kind of failure (`shared/exceptions.py`).

- `StoreConflict` (deadlock, serialization failure): try the same call again at once; the
  other transaction went through.
- `GroupMissing` (the group was deleted, or Redis lost it): recreate the group (the caller's
  `recreate_group`, which also raises the alarm: `invariants.ensure_group`), then try again.
- `BrokerUnavailable`, `StoreUnavailable`: back off (0.1 s, doubling, at most 5 s) and try again.
- `EntryRejected` does not come here: `dead_letters` isolates the entry.

Nothing committed is ever acked before its commit, so retrying a call is always safe. A stop
request ends the waiting: `Stopped` is raised, and what was not acked stays pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.exceptions import GroupMissing, StoreConflict, Unavailable

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0

T = TypeVar("T")


class Stopped(Exception):
    """A stop was requested while waiting for a server to come back."""


def backoff_s(attempt: int) -> float:
    """The pause before try `attempt + 1` after an outage: 0.1 s, doubling, at most 5 s."""
    # The exponent is capped: 2.0 ** 1024 overflows, and an outage of 85 minutes takes the
    # count of attempts that far.
    return min(MAX_BACKOFF_S, 0.1 * 2.0 ** min(attempt - 1, 16))


async def until_done(call: Callable[[], Awaitable[T]], *,
                     recreate_group: Callable[[], Awaitable[object]], stop: asyncio.Event) -> T:
    """Run `call` until it succeeds, handling each failure as this module's docstring says."""
    attempt = 0
    group_missing = False
    while True:
        try:
            if group_missing:
                await recreate_group()
                group_missing = False
            return await call()
        except StoreConflict as error:
            if stop.is_set():
                raise Stopped() from error
            logger.info("store conflict, retrying at once: %s", error,
                        extra={"action": "store_conflict"})
        except (GroupMissing, Unavailable) as error:
            if stop.is_set():
                raise Stopped() from error
            attempt += 1
            if isinstance(error, GroupMissing):
                group_missing = True
                what = "group_missing"
            else:
                what = f"{error.what}_unavailable"
            await _pause(what, error, stop, backoff_s(attempt), attempt)


async def _pause(what: str, error: BaseException, stop: asyncio.Event, delay: float,
                 attempt: int) -> None:
    logger.warning("%s, retrying in %.1fs: %s", what.replace("_", " "), delay, error,
                   extra={"action": what, "attempt": attempt})
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)
