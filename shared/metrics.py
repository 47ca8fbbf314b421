"""Every Prometheus metric logagg exports, declared once. Names end in their unit: `_total`,
`_seconds` or `_entries`; label sets are fixed.

Each process registers into the default registry and exposes only what it touches.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from shared.alarms import KINDS
from shared.store import Alarm
from shared.stream import GroupState

# ingest
HTTP_REQUESTS = Counter(
    "logagg_http_requests_total", "HTTP requests answered, by route and status.",
    ["route", "status"])
EVENTS_ACCEPTED = Counter(
    "logagg_events_accepted_total", "Events answered 202 (appended to the stream).")
PUBLISH_SECONDS = Histogram(
    "logagg_publish_seconds", "Time to answer POST /publish, validation and XADD included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))

# consumer
EVENTS_PROCESSED = Counter(
    "logagg_events_processed_total",
    "Stream entries settled, by result: unique, duplicate, redelivered (settled before, so "
    "counted nowhere) or dead_lettered.", ["result"])
REDELIVERIES = Counter(
    "logagg_redeliveries_total",
    "Entries delivered again: claimed from an idle consumer, or resumed by a restarted one.",
    ["how"])
BATCH_SECONDS = Histogram(
    "logagg_batch_seconds", "Time to settle one batch: transaction and XACK.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
BATCH_ENTRIES = Histogram(
    "logagg_batch_entries", "Entries per settled batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000))

# the consumer group, as ingest and every consumer see it (XINFO GROUPS, XPENDING)
STREAM_UNACKED = Gauge(
    "logagg_stream_unacked_entries", "Entries delivered to a consumer and not acked yet.")
STREAM_LAG = Gauge(
    "logagg_stream_lag_entries", "Entries in the stream not delivered to the group yet.")
STREAM_MEMORY = Gauge(
    "logagg_stream_memory_bytes",
    "Memory Redis uses for the stream (MEMORY USAGE, sampled), as ingest last read it: "
    "unsettled entries, settled ones not trimmed yet, the pending list. MAX_BACKLOG_BYTES "
    "bounds it.")
OLDEST_UNACKED_AGE = Gauge(
    "logagg_oldest_unacked_age_seconds",
    "Time since the oldest unacked entry was appended; 0 when nothing is unacked.")


def record_group_state(state: GroupState) -> None:
    STREAM_UNACKED.set(state.unacked)
    STREAM_LAG.set(state.lag)
    oldest = state.oldest_unacked
    OLDEST_UNACKED_AGE.set(max(0.0, time.time() - oldest.ms / 1000) if oldest else 0.0)

# alarms (shared/alarms.py), as ingest reads them from the store at each scrape
ALARM = Gauge(
    "logagg_alarm", "1 while an alarm of this kind stands (see /stats for its message), else 0.",
    ["kind"])


def record_alarms(alarms: list[Alarm]) -> None:
    standing = {alarm.kind for alarm in alarms}
    for kind in KINDS:
        ALARM.labels(kind=kind).set(1 if kind in standing else 0)

# API keys (services/ingest/auth.py)
KEYS_AGE = Gauge(
    "logagg_keys_age_seconds",
    "Time since this ingest last read the API keys; over a second means a revoked key may "
    "still work here (PostgreSQL unreachable).")
AUTH_REFUSED = Counter(
    "logagg_auth_refused_total", "Requests refused for their key.", ["status"])
