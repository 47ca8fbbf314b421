"""The consumer's retry policy: what to do about each kind of failure (`shared/exceptions.py`).

- `StoreConflict` (deadlock, serialization failure): try the same call again at once; the
  other transaction went through. A settling transaction gets CONFLICT_TRIES tries in a row
  (`settling`); one that still conflicts is judged like any other failure of the store, below.
- `GroupMissing` (the group was deleted, or Redis lost it): recreate the group (the caller's
  `recreate_group`, which also raises the alarm: `invariants.ensure_group`), then try again.
- `BrokerUnavailable`, `StoreUnavailable`: back off (0.1 s, doubling, at most 5 s) and try again.

A settling transaction that fails is judged before anything is retried (`is_outage`): if the
store does not answer right after, it is an outage, and the batch is retried as it is, with
backoff, however long that lasts: nothing is dead-lettered for an outage. Otherwise the batch is
settled entry by entry (`dead_letters.settle_isolating`), so that one entry cannot hold its
neighbours back; an entry that fails alone, with a rejection of its data (`EntryRejected`) or
with any other error while the store answers (a lock it waits for, a server limit it exceeds),
is left pending, delivered again, and dead-lettered after MAX_DELIVERIES. What this cannot
tell apart: a store that answers and reads but cannot write (read-only after a failover, a full
disk). Its entries fail alone too, but no dead letter can be written while it lasts (that write
backs off as an outage), so at most the batch each consumer holds when its entries reach
MAX_DELIVERIES becomes dead letters once the store writes again (replayable).

Nothing committed is ever acked before its commit, so retrying a call is always safe. A stop
request ends the waiting: `Stopped` is raised, and what was not acked stays pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.exceptions import (
    EntryRejected,
    GroupMissing,
    StoreConflict,
    StoreUnavailable,
    Unavailable,
)
from shared.store import Store

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0
# Consumers sort the keys they lock, so two conflicts in a row are rare; ten mean that the
# transaction will keep conflicting (something in the database aborts it every time).
CONFLICT_TRIES = 10

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
            _conflict(error)
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


async def settling(call: Callable[[], Awaitable[T]]) -> T:
    """Run a settling transaction, again at once after a conflict, CONFLICT_TRIES times at
    most; the last conflict goes up, to be judged by `is_outage`."""
    for _ in range(CONFLICT_TRIES - 1):
        try:
            return await call()
        except StoreConflict as error:
            _conflict(error)
    return await call()


async def is_outage(store: Store, error: EntryRejected | StoreUnavailable) -> bool:
    """Whether a settling transaction failed because the store is down (retry it as it is,
    with backoff) rather than because of what it carried. A rejection of the data never is;
    any other failure is when the store does not answer right after (`store_answers`)."""
    return not isinstance(error, EntryRejected) and not await store_answers(store)


async def store_answers(store: Store) -> bool:
    """Whether PostgreSQL answers (`Store.ping`, which waits 2 s at most for a connection), and
    reads every table that settling touches (`Store.tables_answer`): a store without one of
    them (a botched migration) answers SELECT 1, and would see every entry fail alone."""
    try:
        await store.ping()
        await store.tables_answer()
    except StoreUnavailable:
        return False
    return True


def _conflict(error: StoreConflict) -> None:
    logger.info("store conflict, retrying at once: %s", error,
                extra={"action": "store_conflict"})


async def _pause(what: str, error: BaseException, stop: asyncio.Event, delay: float,
                 attempt: int) -> None:
    logger.warning("%s, retrying in %.1fs: %s", what.replace("_", " "), delay, error,
                   extra={"action": what, "attempt": attempt})
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)
