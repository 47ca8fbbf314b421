"""Every setting of every logagg process, read once from the environment.

SPEC §1 names the variables; `.env.example` lists them with their defaults. Nothing else in the
code base reads `os.environ` for configuration: processes build one `Settings` and pass it down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from shared.exceptions import ConfigurationError

MAX_EVENT_BYTES_LIMIT = 1024 * 1024  # SPEC §1
MAX_BATCH_BYTES_LIMIT = 512 * 1024 * 1024  # half of PostgreSQL's largest message (1 GiB)
MAX_DAYS = 36_500  # retention and dedup window: a century at most


def _default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = "redis://localhost:6379/0"
    database_url: str = "postgresql://postgres@localhost:5432/logagg"
    ingest_host: str = "0.0.0.0"
    ingest_port: int = 8080
    stream_key: str = "events"
    consumer_group: str = "aggregator"
    consumer_name: str = ""
    batch_size: int = 500
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    metrics_port: int = 9100
    max_batch_events: int = 1000
    max_body_bytes: int = 5 * 1024 * 1024
    # The largest event: its JSON as it goes into the stream. 256 KiB, as Google Cloud Logging
    # allows per entry: room for long stack traces and flattened payloads, while a batch of
    # BATCH_SIZE such events (125 MiB) still fits the default BATCH_BYTES.
    max_event_bytes: int = 256 * 1024
    log_level: str = "INFO"
    log_format: str = "auto"  # json | text | auto (text on a terminal, JSON lines otherwise)
    # Beyond SPEC §1: backpressure and stream upkeep.
    max_backlog: int = 500_000  # entries pending or undelivered before ingest answers 503; 0: off
    # Bytes of Redis memory the stream may take before ingest answers 503 (MEMORY USAGE of
    # the stream's key, services/ingest/backpressure.py); 0: off. 1 GiB: 500,000 entries of
    # about 2 KB, so the entries limit comes first for ordinary events, this one for large.
    max_backlog_bytes: int = 1024 ** 3
    # The edge: how long a client may take and how much of ingest it may hold
    # (services/ingest/server.py). A new connection has HEADER_TIMEOUT_MS to send its first
    # request's headers; a kept-alive one KEEPALIVE_TIMEOUT_MS after an answer for the next
    # (idle or half-sent: closed); a body BODY_TIMEOUT_MS once its headers are in (408).
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 30_000  # a whole MAX_BODY_BYTES (5 MiB) at 1.4 Mbit/s
    keepalive_timeout_ms: int = 15_000
    max_connections: int = 1000  # per ingest process; past it a new one gets a 503 at once
    max_requests_per_connection: int = 1000  # the answer to the last says `Connection: close`
    consumer_gone_ms: int = 3_600_000  # idle time after which a consumer with nothing pending
    #                                    is removed from the group
    # What one read may bring into a consumer, in event bytes (see `read_count`). 128 MiB
    # keeps BATCH_SIZE (500) entries per read at the default MAX_EVENT_BYTES.
    batch_bytes: int = 128 * 1024 * 1024
    # Keys (SPEC §3a). AUTH=off only on a trusted network: no key is asked for.
    auth: str = "on"
    # The key logagg's own clients send (`logagg publish`, `bench`, k6): `Bearer API_KEY`.
    # A secret: kept out of the repr, so out of logs and tracebacks.
    api_key: str = dataclasses.field(default="", repr=False)
    # How often each ingest looks for created or revoked keys: a revoked key stops working on
    # every ingest within this, plus a query's time.
    keys_refresh_ms: int = 500
    # Topics: how many distinct topics ingest admits, across every ingest process (a Redis
    # set); an event of a new topic past it is refused (422 too_many_topics). 0: no limit.
    # 10,000: a topic names a kind of event (a service, a log), of which a deployment has
    # tens or hundreds; a client that puts a request id in it is stopped after 10,000, at a
    # few MB of Redis and of each ingest's memory (255 characters a topic at most).
    max_topics: int = 10_000
    # POST /v1/logs (services/ingest/otlp.py): the resource attribute whose value is the topic
    # of each log record; `service.name` by default, as Loki's labels do.
    otlp_topic_attribute: str = "service.name"
    # Retention (SPEC §1, §4; shared/retention.py). Stored events older than RETENTION_DAYS by
    # received time are removed, a whole partition at a time (0: kept forever); a topic named
    # in RETENTION_TOPIC_DAYS, a JSON object such as {"audit": 365, "debug": 1}, keeps its own
    # (0: forever). Fractions of days are allowed.
    retention_days: float = 0.0
    retention_topic_days: str = ""
    # How long a key is remembered for deduplication after its first copy was accepted: a week
    # covers retries, shipper disk buffers replayed after a crash, and a source down over a
    # weekend, at about 120 bytes of PostgreSQL per distinct event of the week.
    dedup_window_days: float = 7.0
    # The width of each partition of `events`: retention removes an event at most this long
    # after it expired.
    partition_seconds: int = 86_400
    # Dead letters go this many days after their event was received (0: kept): a month for an
    # operator to look and replay.
    dead_letter_days: float = 30.0

    @property
    def retention_by_topic(self) -> dict[str, float]:
        """RETENTION_TOPIC_DAYS, parsed: days to keep each named topic's events (0: forever)."""
        if not self.retention_topic_days.strip():
            return {}
        try:
            parsed = json.loads(self.retention_topic_days)
        except ValueError as error:
            raise ConfigurationError(f"RETENTION_TOPIC_DAYS must be a JSON object of topic: "
                                     f"days, got {self.retention_topic_days!r}: {error}") from None
        if not isinstance(parsed, dict) or not all(
                isinstance(days, int | float) and not isinstance(days, bool)
                and 0 <= days <= MAX_DAYS for days in parsed.values()):
            raise ConfigurationError(f"RETENTION_TOPIC_DAYS must be a JSON object of topic: "
                                     f"days (0 to {MAX_DAYS}), got "
                                     f"{self.retention_topic_days!r}")
        return {str(topic): float(days) for topic, days in parsed.items()}

    @property
    def read_count(self) -> int:
        """Entries per read of a consumer (new entries, its own after a restart; claims are to
        follow, services/consumer/recovery.py still reads BATCH_SIZE): BATCH_SIZE, or fewer if
        that many events of MAX_EVENT_BYTES would be over BATCH_BYTES.
        A consumer holds what it read about twice over while it settles it (as Redis sent it,
        and each payload re-serialized), so BATCH_BYTES, not what BATCH_SIZE events might
        weigh, bounds its memory (tests/acceptance/test_memory.py)."""
        return min(self.batch_size, max(1, self.batch_bytes // self.max_event_bytes))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `environ` (default: the process environment), then `overrides`.

        Each field reads the upper-cased variable of the same name. A value that does not parse
        raises `ConfigurationError` naming the variable, instead of failing later and obscurely.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(field.name, raw, field.default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings = replace(settings, log_level=settings.log_level.upper())
        if not settings.consumer_name:
            settings = replace(settings, consumer_name=_default_consumer_name())
        settings.check()
        return settings

    def to_env(self) -> dict[str, str]:
        """These settings as the environment of a child process, which reads them back with
        `from_env` (every field, so a new setting cannot be left behind). CONSUMER_NAME is
        left out: it names one process, and each child gets its own."""
        return {field.name.upper(): str(getattr(self, field.name)) for field in fields(self)
                if field.name != "consumer_name"}

    def check(self) -> None:
        positive = ("batch_size", "claim_idle_ms", "max_deliveries", "max_batch_events",
                    "max_body_bytes", "max_event_bytes", "consumer_gone_ms", "batch_bytes")
        if self.max_backlog < 0:
            raise ConfigurationError(f"MAX_BACKLOG must be 0 (no limit) or more, "
                                     f"got {self.max_backlog}")
        if self.max_backlog_bytes < 0:
            raise ConfigurationError(f"MAX_BACKLOG_BYTES must be 0 (no limit) or more, "
                                     f"got {self.max_backlog_bytes}")
        if self.max_topics < 0:
            raise ConfigurationError(f"MAX_TOPICS must be 0 (no limit) or more, "
                                     f"got {self.max_topics}")
        # Every limit of the edge is on: none has a "0: off".
        edge = ("header_timeout_ms", "body_timeout_ms", "keepalive_timeout_ms", "max_connections",
                "max_requests_per_connection")
        for name in positive + edge:
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name.upper()} must be positive, "
                                         f"got {getattr(self, name)}")
        for name in ("ingest_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigurationError(f"{name.upper()} must be a TCP port, "
                                         f"got {getattr(self, name)}")
        if self.max_event_bytes > MAX_EVENT_BYTES_LIMIT:
            raise ConfigurationError(
                f"MAX_EVENT_BYTES must be at most {MAX_EVENT_BYTES_LIMIT} (1 MiB, SPEC §1), "
                f"got {self.max_event_bytes}")
        if self.batch_bytes < self.max_event_bytes:
            raise ConfigurationError(
                f"BATCH_BYTES ({self.batch_bytes}) must be at least MAX_EVENT_BYTES "
                f"({self.max_event_bytes}): a consumer reads at least one event at a time")
        if self.batch_bytes > MAX_BATCH_BYTES_LIMIT:
            raise ConfigurationError(
                f"BATCH_BYTES must be at most {MAX_BATCH_BYTES_LIMIT} (512 MiB), got "
                f"{self.batch_bytes}: a batch is settled by one statement, and PostgreSQL "
                f"refuses a message of 1 GiB or more")
        for name in ("retention_days", "dedup_window_days", "dead_letter_days"):
            if not 0 <= getattr(self, name) <= MAX_DAYS:
                raise ConfigurationError(f"{name.upper()} must be 0 to {MAX_DAYS} days, got "
                                         f"{getattr(self, name)}")
        if self.dedup_window_days == 0:
            raise ConfigurationError("DEDUP_WINDOW_DAYS must be above 0: a key must be "
                                     "remembered for a while for duplicates to be caught")
        if self.partition_seconds <= 0:
            raise ConfigurationError(f"PARTITION_SECONDS must be positive, got "
                                     f"{self.partition_seconds}")
        _ = self.retention_by_topic  # parses, or raises ConfigurationError naming the variable
        if not self.otlp_topic_attribute:
            raise ConfigurationError("OTLP_TOPIC_ATTRIBUTE must name a resource attribute")
        if self.auth not in {"on", "off"}:
            raise ConfigurationError(f"AUTH must be on or off, got {self.auth!r}")
        if not 50 <= self.keys_refresh_ms <= 1000:
            raise ConfigurationError(f"KEYS_REFRESH_MS must be 50 to 1000 (a revoked key must "
                                     f"stop working within a second), got "
                                     f"{self.keys_refresh_ms}")
        if self.log_format not in {"auto", "json", "text"}:
            raise ConfigurationError(
                f"LOG_FORMAT must be auto, json or text, got {self.log_format!r}")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigurationError(
                f"LOG_LEVEL must be a logging level name, got {self.log_level!r}")


def _parse(name: str, raw: str, default: object) -> object:
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigurationError(f"{name.upper()} must be a number, got {raw!r}") from None
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigurationError(f"{name.upper()} must be an integer, got {raw!r}") from None
    return raw
