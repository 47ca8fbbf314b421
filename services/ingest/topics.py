"""The limit on distinct topics, MAX_TOPICS, shared by every ingest process of a stream.

The topics admitted are a Redis set, `<STREAM_KEY>:topics`. A request whose events bring topics
this process has not seen admitted asks the set, in one atomic script
(shared/lua/admit_topics.lua), to admit them all, or none if the new ones would take it past
the limit: then the request is refused (422 `too_many_topics`, naming the events of the new
topics) and nothing of it is enqueued. Each process remembers the topics it saw admitted (as
many as the limit, at most), so a request of known topics costs no round trip; only a new
topic does. The set only grows: retention (issue 12) removes stored events, never a topic's
counts nor its place here.

The set starts from the topics the store counts (a deployment older than the limit has them
there only): the first new topic finds it unseeded (its member '' is missing) and seeds it.
What Redis may lose, and what follows:
- the whole set (a new Redis, or one restored from a file older than the seed): seeded again,
  from the store, at the next new topic;
- topics admitted after the file it was restored from was written: they are admitted again
  when they come back, while there is room. A topic the store counts is never refused: before
  refusing, ingest asks the store which of the new topics it counts, and puts those back in the
  set whatever the limit. So what Redis forgot can let the set admit that many topics more
  than MAX_TOPICS (those not settled yet when it forgot them), never refuse a known one.
While PostgreSQL does not answer, an unseeded set is counted as it is (ingest keeps accepting
events), and seeding is tried again after SEED_RETRY_S; a refusal, which needs the store's
word, is a 503 instead. With MAX_TOPICS=0 (no limit) the set is marked unseeded once and left
alone, so that a limit set later starts from the store again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from services.ingest.errors import ApiError
from services.ingest.keys import STORE, STREAM
from shared.exceptions import StoreUnavailable
from shared.store import Store
from shared.stream import Admission, Stream
from shared.validation import MAX_DETAILS

logger = logging.getLogger(__name__)

SEED_RETRY_S = 10.0  # after the store failed to answer for the seed


class Topics:
    """The topics this process knows are admitted, and the way to admit new ones."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.known: set[str] = set()
        self._seeding = asyncio.Lock()
        self._seeded_at = -SEED_RETRY_S  # monotonic
        self._open_until = 0.0  # until then the set is counted as it is, seeded or not
        self._unmarked = False

    async def admit(self, stream: Stream, store: Store,
                    events: Sequence[Mapping[str, Any]]) -> None:
        """Admit the topics of a request's valid events, or raise 422 `too_many_topics`
        naming the events of new topics, none of them admitted."""
        if not self.limit:
            await self._mark_unlimited(stream)
            return
        new = {event["topic"] for event in events} - self.known
        if not new:
            return
        verdict = await self._ask(stream, store, new)
        if verdict.refused:
            verdict = await self._put_back_counted(stream, store, new, verdict)
        if verdict.refused:
            raise self._refusal(events, set(verdict.refused), verdict.held)
        self.known |= new

    async def _ask(self, stream: Stream, store: Store, topics: set[str]) -> Admission:
        verdict = await stream.admit_topics(topics, limit=self.limit, seeded=self._seeded())
        if not verdict.unseeded:
            return verdict
        await self._seed(stream, store)
        return await stream.admit_topics(topics, limit=self.limit, seeded=self._seeded())

    def _seeded(self) -> bool:
        """Whether to count on a seeded set (not while the store could not seed it)."""
        return time.monotonic() >= self._open_until

    async def _seed(self, stream: Stream, store: Store) -> None:
        async with self._seeding:
            if time.monotonic() - self._seeded_at < SEED_RETRY_S or not self._seeded():
                return  # done, or tried, a moment ago (by another request)
            try:
                topics = await store.topics()
            except StoreUnavailable as error:
                self._open_until = time.monotonic() + SEED_RETRY_S
                logger.warning("the store did not answer for the topics to seed the limit "
                               "with; counting the topics admitted so far meanwhile",
                               extra={"action": "topics_unseeded", "error": str(error)})
                return
            await stream.add_topics(topics, seeded=True)
            self._seeded_at = time.monotonic()
            logger.info("topics seeded from the store", extra={
                "action": "topics_seeded", "topics": len(topics)})

    async def _put_back_counted(self, stream: Stream, store: Store, new: set[str],
                                verdict: Admission) -> Admission:
        """Before refusing: the store's topics were admitted once, and Redis forgot them. Put
        them back whatever the limit, then ask again for the rest."""
        counted = await store.counted_topics(verdict.refused)
        if not counted:
            return verdict
        await stream.add_topics(counted)
        self.known |= counted
        logger.warning("topics the store counts were missing from the set of admitted ones "
                       "(Redis lost them); put back", extra={
                           "action": "topics_put_back", "topics": len(counted)})
        rest = new - counted
        return await self._ask(stream, store, rest) if rest else Admission()

    def _refusal(self, events: Sequence[Mapping[str, Any]], refused: set[str],
                 held: int) -> ApiError:
        offending = [index for index, event in enumerate(events) if event["topic"] in refused]
        details = [{"index": index, "path": "/topic",
                    "message": f"new topic {events[index]['topic']!r}: {held} of MAX_TOPICS "
                               f"({self.limit}) are admitted, no room for {len(refused)} more"}
                   for index in offending[:MAX_DETAILS]]
        shown = f"; the first {len(details)} are listed" if len(offending) > len(details) else ""
        return ApiError(422, "too_many_topics",
                        f"{len(offending)} of {len(events)} events carry {len(refused)} new "
                        f"topic(s), and {held} of MAX_TOPICS ({self.limit}) are admitted: no "
                        f"room for them{shown}; none was accepted", details=details)

    async def _mark_unlimited(self, stream: Stream) -> None:
        if not self._unmarked:
            await stream.unseed_topics()
            self._unmarked = True


TOPICS = web.AppKey("topics", Topics)


async def admit_topics(app: web.Application, events: Sequence[Mapping[str, Any]]) -> None:
    """Admit the topics of a publish request's valid events (`Topics.admit`)."""
    await app[TOPICS].admit(app[STREAM], app[STORE], events)
