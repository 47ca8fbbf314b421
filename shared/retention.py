"""What is kept, and for how long: the retention of stored events and the dedup window.

Settings name them in days (SPEC §1); the store and housekeeping work in milliseconds of the
stream's clock, the one that stamps every position (Redis TIME), so that received time, expiry
and the window are all measured by one clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.settings import Settings

DAY_MS = 86_400_000
# The expiry of an event kept forever: the lower bound of the `events_kept` partition
# (sql/0008_retention.sql), far past any real time (2^62 ms is 146 million years).
KEPT = 2**62
# Generations of dedup keys per window: a key is remembered for the window, and forgotten at
# most a quarter of it later (services/consumer/retention.py). More would forget sooner and
# cost a lookup each per new key; fewer would keep keys longer.
GENERATIONS_PER_WINDOW = 4


@dataclass(frozen=True, slots=True)
class Retention:
    """How long events are kept (0: forever), per topic, and how long keys are remembered."""

    default_ms: int = 0
    topic_ms: dict[str, int] = field(default_factory=dict)
    window_ms: int = 7 * DAY_MS
    partition_ms: int = DAY_MS
    dead_letter_ms: int = 0  # 0: dead letters are kept

    @classmethod
    def of(cls, settings: Settings) -> Retention:
        return cls(
            default_ms=round(settings.retention_days * DAY_MS),
            topic_ms={topic: round(days * DAY_MS)
                      for topic, days in settings.retention_by_topic.items()},
            window_ms=max(1, round(settings.dedup_window_days * DAY_MS)),
            partition_ms=settings.partition_seconds * 1000,
            dead_letter_ms=round(settings.dead_letter_days * DAY_MS))

    def expires_ms(self, topic: str, received_ms: int) -> int:
        """When an event of `topic` received at `received_ms` may be removed; KEPT: never."""
        keep = self.topic_ms.get(topic, self.default_ms)
        return KEPT if keep == 0 else min(received_ms + keep, KEPT - 1)

    @property
    def longest_ms(self) -> int:
        """The longest finite retention in use, 0 when every topic is kept forever."""
        return max([self.default_ms, *self.topic_ms.values()])

    @property
    def generation_ms(self) -> int:
        """How long a generation of dedup keys takes new keys before the next one opens."""
        return max(1, self.window_ms // GENERATIONS_PER_WINDOW)
