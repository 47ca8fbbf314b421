"""Sending a workload to the ingest: batches, concurrent workers, pacing, retries, and the report.

The ingest answers a batch all or nothing (SPEC §3), so the batch is the unit of retry: a 5xx,
a 408 (the request arrived too slowly), a 429 (over the key's rate), a dropped connection or a
timeout sends the same bytes again, after the Retry-After the ingest asked for if any, and the
consumers' dedup makes that safe. Another 4xx means the request itself is wrong; sending it
again would get the same answer. A 401 or 403 is about the key (none, unknown, revoked, or not
allowed this): every batch would get it, so the run stops there, sends nothing more, and says
why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import aiohttp
import orjson

from services.publisher.simulator import Workload

logger = logging.getLogger(__name__)

_HEADERS = {"Content-Type": "application/json"}
_BACKOFF_BASE = 0.05  # seconds before the first retry, at most (full jitter)
_BACKOFF_CAP = 5.0
_RETRY_AFTER_CAP = 60.0  # a wrong header must not stall a run for hours
_KEPT_ERRORS = 5  # rejections kept for the report; the rest only counted
# Latencies are kept to the hundredth of a millisecond (what the report shows, and finer), as a
# count per value: their memory grows with the values seen, not with the number of requests.
_TICKS_PER_MS = 100


@dataclass(frozen=True, slots=True)
class Report:
    """What a send did. `requests` counts every HTTP attempt, retries included."""

    events: int
    requests: int
    events_accepted: int
    events_failed: int
    retries: int
    unique_keys: int
    duplicates: int
    seconds: float
    # Of the requests answered 202: (latency in ms, to 0.01, how many requests took it), rising.
    latencies_ms: tuple[tuple[float, int], ...]
    errors: tuple[str, ...]  # the first few rejections and give-ups, as "status error: message"
    stopped: str | None = None  # why the run stopped before the end (a 401 or 403), if it did

    @property
    def events_per_second(self) -> float:
        return self.events_accepted / self.seconds if self.seconds > 0 else 0.0

    @property
    def all_accepted(self) -> bool:
        return self.events_failed == 0 and self.events_accepted == self.events

    @property
    def timed_requests(self) -> int:
        """Requests answered 202, whose latency the report holds."""
        return sum(count for _, count in self.latencies_ms)

    def latency_ms(self, percent: float) -> float | None:
        """Nearest-rank percentile of the successful requests' latency; None before any."""
        rank, seen = max(math.ceil(percent / 100 * self.timed_requests), 1), 0
        for value, count in self.latencies_ms:
            seen += count
            if seen >= rank:
                return value
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events, "requests": self.requests,
            "events_accepted": self.events_accepted, "events_failed": self.events_failed,
            "retries": self.retries, "unique_keys": self.unique_keys,
            "duplicates": self.duplicates, "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second, 1),
            "latency_ms": {f"p{p}": _rounded(self.latency_ms(p)) for p in (50, 95, 99)},
            "errors": list(self.errors), "stopped": self.stopped,
        }

    def summary(self) -> str:
        rows = [
            ("requests", str(self.requests)),
            ("events accepted", f"{self.events_accepted} of {self.events}"),
            ("events failed", str(self.events_failed)),
            ("retries", str(self.retries)),
            ("unique keys", str(self.unique_keys)),
            ("duplicates", str(self.duplicates)),
            ("seconds", f"{self.seconds:.3f}"),
            ("events per second", f"{self.events_per_second:.1f}"),
            *((f"latency p{p} ms", _ms(self.latency_ms(p))) for p in (50, 95, 99)),
        ]
        width = max(len(label) for label, _ in rows)
        lines = [f"{label:<{width}}  {value}" for label, value in rows]
        stopped = [f"stopped: {self.stopped}"] if self.stopped else []
        return "\n".join([*lines, *(f"error: {error}" for error in self.errors), *stopped])


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


async def send(workload: Workload, *, url: str, batch: int, concurrency: int, rate: float | None,
               max_retries: int = 8, timeout: float = 30,  # noqa: ASYNC109
               key: str | None = None,
               bodies: Iterator[tuple[bytes, int]] | None = None) -> Report:
    """Send every event of `workload` to `{url}/publish`; `rate` caps events per second; `key`
    goes in `Authorization: Bearer` (none when None or empty: AUTH=off).

    `timeout` bounds each HTTP request, not the whole send (which `asyncio.timeout` would): a
    request that times out is retried like a dropped connection. `bodies`: the workload's
    request bodies as `batches` makes them, when the caller made some ahead (the bench).
    """
    _check(url=url, batch=batch, concurrency=concurrency, rate=rate, max_retries=max_retries,
           timeout=timeout)
    tally = _Tally()
    if bodies is None:
        bodies = batches(workload.encoded(), batch)
    started = time.perf_counter()
    # One connection per worker at most: each worker has one request in flight.
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    headers = {**_HEADERS, **({"Authorization": f"Bearer {key}"} if key else {})}
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout,
                                     headers=headers) as session:
        sender = _Sender(session, url.rstrip("/") + "/publish", _Pacer(rate), max_retries, tally,
                         keyed=bool(key))
        async with asyncio.TaskGroup() as workers:
            for _ in range(concurrency):
                workers.create_task(sender.drain(bodies))
    return tally.report(workload, time.perf_counter() - started)


def _check(*, url: str, batch: int, concurrency: int, rate: float | None, max_retries: int,
           timeout: float) -> None:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, not {url!r}")
    if batch < 1 or concurrency < 1:
        raise ValueError(f"batch and concurrency must be at least 1, not {batch}, {concurrency}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive events per second, not {rate}")
    if max_retries < 0 or timeout <= 0:
        raise ValueError(f"max_retries must be >= 0 and timeout > 0, not {max_retries}, {timeout}")


def batches(encoded: Iterator[bytes], size: int) -> Iterator[tuple[bytes, int]]:
    """Request bodies and their event counts, in send order, taken from the stream of events
    `size` at a time: only the batches in flight are held, whatever the workload's size.

    Events are joined as they are, never re-serialized, so a re-send stays byte for byte the
    original. The workers share this one iterator: `next()` never awaits, so no two of them can
    take the same batch.
    """
    while chunk := list(islice(encoded, size)):
        yield b"[" + b",".join(chunk) + b"]", len(chunk)


@dataclass(slots=True)
class _Tally:
    """Running counts; plain fields are enough since the workers share one event loop."""

    requests: int = 0
    accepted: int = 0
    failed: int = 0
    retries: int = 0
    latencies: Counter[int] = field(default_factory=Counter)  # in ticks of 1/_TICKS_PER_MS ms
    errors: list[str] = field(default_factory=list)
    stopped: str | None = None  # set once: no batch is sent after it

    def fail(self, events: int, reason: str) -> None:
        self.failed += events
        if len(self.errors) < _KEPT_ERRORS:
            self.errors.append(reason)


    def report(self, workload: Workload, seconds: float) -> Report:
        return Report(
            events=workload.events, requests=self.requests, events_accepted=self.accepted,
            events_failed=self.failed, retries=self.retries, unique_keys=workload.unique_keys,
            duplicates=workload.duplicates, seconds=seconds,
            latencies_ms=tuple((ticks / _TICKS_PER_MS, count)
                               for ticks, count in sorted(self.latencies.items())),
            errors=tuple(self.errors),
            stopped=self.stopped,
        )


class _Pacer:
    """Spaces requests out so that the run sends at most `rate` events per second on average.

    Each request books the next free slot on one shared timeline before it awaits anything, so the
    workers need no lock. Retries are paced too: they reach the ingest like any request.
    """

    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self._next = 0.0

    def book(self, events: int) -> float:
        """Seconds to wait before sending a request of `events`."""
        if self._rate is None:
            return 0.0
        now = asyncio.get_running_loop().time()
        slot = max(self._next, now)
        self._next = slot + events / self._rate
        return slot - now


class _Retry(Exception):
    """The batch may succeed if sent again: a 5xx, a dropped connection or a timeout."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Rejected(Exception):
    """The ingest refused the batch itself (4xx); the same bytes would be refused again."""


class _KeyRefused(_Rejected):
    """401 or 403: the key may not do this, and every batch would be refused the same way."""


class _NotSent(Exception):
    """The run stopped before this batch's turn to be sent."""


class _Sender:
    def __init__(self, session: aiohttp.ClientSession, endpoint: str, pacer: _Pacer,
                 max_retries: int, tally: _Tally, *, keyed: bool) -> None:
        self._session = session
        self._keyed = keyed
        self._endpoint = endpoint
        self._pacer = pacer
        self._max_retries = max_retries
        self._tally = tally
        self._jitter = random.Random()
        self._stopping = asyncio.Event()

    async def drain(self, batches: Iterator[tuple[bytes, int]]) -> None:
        """One worker: take batches until none is left; after a stop, count the rest as failed
        without sending them."""
        for body, count in batches:
            if self._tally.stopped is None:
                await self._deliver(body, count)
            else:
                self._tally.failed += count

    async def _deliver(self, body: bytes, count: int) -> None:
        """Send one batch until it is accepted, refused, or out of retries."""
        retry = await self._attempt(body, count)
        for attempt in range(1, self._max_retries + 1):
            if retry is None:
                return
            await self._pause(self._delay(attempt, retry.retry_after))
            if self._tally.stopped is not None:  # before the pause, or during it
                self._tally.failed += count
                return
            self._tally.retries += 1
            retry = await self._attempt(body, count)
        if retry is not None:
            self._tally.fail(count, f"gave up after {self._max_retries} retries: {retry}")
            logger.warning("batch given up", extra={"action": "publish_gave_up", "events": count,
                                                    "reason": str(retry)})

    async def _attempt(self, body: bytes, count: int) -> _Retry | None:
        """One try at a batch, counted; None once it is settled, else why to try again."""
        try:
            # Not `tally.accepted += await ...`: that reads the count before the await and would
            # write back a stale sum over what the other workers added meanwhile.
            accepted = await self._post(body, count)
        except _NotSent:
            self._tally.failed += count
        except _KeyRefused as refused:
            if self._tally.stopped is None:
                self._tally.fail(count, str(refused))
                self._stop(self._key_problem(refused), count)
            else:  # a request in flight when the first refusal came: that one says it all
                self._tally.failed += count
        except _Rejected as refused:
            logger.warning("batch refused", extra={"action": "publish_refused", "events": count,
                                                   "reason": str(refused)})
            self._tally.fail(count, str(refused))
        except _Retry as retry:
            logger.debug("batch to retry", extra={"action": "publish_retry", "reason": str(retry)})
            return retry
        else:
            self._tally.accepted += accepted
        return None

    def _stop(self, reason: str, events: int) -> None:
        """Send nothing more: workers waiting to send or to retry give up their batch now."""
        if self._tally.stopped is None:
            logger.error("the key was refused; stopping", extra={
                "action": "publish_stopped", "events": events, "reason": reason})
            self._tally.stopped = reason
            self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the run stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _key_problem(self, refused: _KeyRefused) -> str:
        """What a 401 or 403 says about the run's key, and what to do (never the key itself)."""
        if not self._keyed:
            return (f"{refused}; no key was sent: set API_KEY or pass --key (a key with the "
                    "publish scope: logagg keys create NAME --scopes publish)")
        return (f"{refused}; check the key given by API_KEY or --key (logagg keys list shows "
                "which are live, and their scopes, topics and source)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff, or what the server asked for plus a little jitter.

        The jitter on Retry-After keeps the workers that got the same 503 from coming back in
        the same instant.
        """
        if retry_after is not None:
            return min(retry_after, _RETRY_AFTER_CAP) + self._jitter.uniform(0, _BACKOFF_BASE)
        return self._jitter.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1)))

    async def _post(self, body: bytes, count: int) -> int:
        """One attempt; the number of events accepted, or `_Retry` / `_Rejected`."""
        wait = self._pacer.book(count)
        if wait > 0:
            await self._pause(wait)
        if self._tally.stopped is not None:
            raise _NotSent
        self._tally.requests += 1
        started = time.perf_counter()
        try:
            async with self._session.post(self._endpoint, data=body) as answer:
                status, headers, text = answer.status, answer.headers, await answer.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _Retry(f"{type(error).__name__}: {error}") from error
        if status != 202:
            raise _failure(status, headers, text)
        self._tally.latencies[round((time.perf_counter() - started) * 1000 * _TICKS_PER_MS)] += 1
        return _accepted(text)


def _failure(status: int, headers: Mapping[str, str], text: bytes) -> Exception:
    """What a non-202 answer means: worth retrying (5xx; 429, over the key's rate; 408, the
    request was too slow to arrive), the key's fault (401, 403: the run stops), or the batch's
    (any other)."""
    reason = f"{status} {_error_text(text)}"
    if status >= 500 or status in (408, 429):
        retry_after = _retry_after(headers) if status in (429, 503) else None
        return _Retry(reason, retry_after)
    if status in (401, 403):
        return _KeyRefused(reason)
    return _Rejected(reason)


def _error_text(text: bytes) -> str:
    """`error: message` from the API's error body (SPEC §3), or the start of whatever came."""
    try:
        body = orjson.loads(text)
        return f"{body['error']}: {body['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return text[:200].decode(errors="replace")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (the ingest's form); None when absent or an HTTP date."""
    try:
        seconds = float(headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _accepted(text: bytes) -> int:
    try:
        accepted = orjson.loads(text)["accepted"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        raise _Rejected(f"202 without an accepted count: {text[:200]!r}") from error
    if not isinstance(accepted, int):
        raise _Rejected(f"202 with a non-integer accepted count: {accepted!r}")
    return accepted
