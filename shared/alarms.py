"""Alarms: what the system could not guarantee, reported instead of kept silent (SPEC §4).

An alarm is raised where its fault is detected (`services/consumer/invariants.py`), stands in the
store until an operator clears it (`logagg alarms clear KIND`), and shows in `/stats`,
`/metrics` (`logagg_alarm`) and the dashboard. Raising one that stands refreshes its message and
keeps its `since`.
"""

from __future__ import annotations

import logging

from shared.store import Store

logger = logging.getLogger(__name__)

# The broker's log went back: settled positions are missing from it, or a first delivery came
# below the settled floor. Events accepted in the lost part, and their `received` count, are gone.
BROKER_HISTORY_LOST = "broker_history_lost"
# The consumer group vanished and was recreated.
GROUP_LOST = "group_lost"
# Nothing pending, yet received != unique_processed + duplicate_dropped + dead_lettered.
BALANCE_DRIFT = "balance_drift"

# An entry received before the forgotten horizon was stored as new: a key its duplicate might
# have matched was forgotten already (a backlog older than the dedup window, or the stream's
# clock gone back). It may be a duplicate counted as unique.
DEDUP_WINDOW_MISSED = "dedup_window_missed"
# An event was stored with another expiry than its retention asks: no partition of `events`
# was made for it in time (housekeeping makes them ahead, at every consumer's start too).
RETENTION_MISPLACED = "retention_misplaced"

# The broker's maxmemory-policy may evict the stream: at its memory limit it would delete
# accepted entries instead of refusing new ones.
BROKER_MAY_EVICT = "broker_may_evict"

KINDS = (BROKER_HISTORY_LOST, GROUP_LOST, BALANCE_DRIFT, DEDUP_WINDOW_MISSED,
         RETENTION_MISPLACED, BROKER_MAY_EVICT)


async def raise_alarm(store: Store, kind: str, message: str) -> None:
    """Record the alarm (or refresh the one standing), and log it when it is new."""
    if await store.raise_alarm(kind, message):
        logger.error("alarm: %s", message, extra={"action": "alarm_raised", "kind": kind})
