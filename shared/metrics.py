"""Every Prometheus metric logagg exports, declared once. Names end in `_total` or `_seconds`.

Each process registers into the default registry and exposes only what it touches.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
    "logagg_events_processed_total", "Stream entries settled, by result.", ["result"])
ENTRIES_CLAIMED = Counter(
    "logagg_entries_claimed_total", "Entries taken over from idle consumers (XAUTOCLAIM).")
BATCH_SECONDS = Histogram(
    "logagg_batch_seconds", "Time to settle one batch: transaction and XACK.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
BATCH_SIZE = Histogram(
    "logagg_batch_size", "Entries per settled batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000))
