"""Rate limits of API keys (SPEC §3a): events/s and a burst, one budget shared by every ingest
process, kept in Redis (shared/lua/take_tokens.lua). A key without a rate costs nothing here;
a key with one costs one round trip per publish request."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.constants import bucket_key
from shared.keys import ApiKey
from shared.paths import LUA_DIR
from shared.stream import broker_errors


class RateLimits:
    def __init__(self, redis: Redis, stream_key: str) -> None:
        self.stream_key = stream_key
        self._take = redis.register_script((LUA_DIR / "take_tokens.lua").read_text())

    async def wait_for(self, key: ApiKey, events: int) -> float:
        """Take `events` from the key's budget: 0.0 when they fit, else the seconds until they
        would (and nothing is taken)."""
        if key.rate is None or key.burst is None:
            return 0.0
        with broker_errors():
            admitted, figure = await self._take(keys=[bucket_key(self.stream_key, key.id)],
                                                args=[key.rate, key.burst, events])
        return 0.0 if int(admitted) else float(figure)
