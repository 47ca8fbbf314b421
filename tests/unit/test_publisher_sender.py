"""The sender against a stand-in ingest: a real aiohttp server that answers from a script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.publisher.sender import Report, send
from services.publisher.simulator import Workload, workload

Answer = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


async def accept(request: web.Request, body: bytes) -> web.StreamResponse:
    return web.json_response({"accepted": len(orjson.loads(body))}, status=202)


async def busy(request: web.Request, body: bytes) -> web.StreamResponse:
    return _error(503, "broker_unavailable", "the broker is not answering")


async def busy_for_a_second(request: web.Request, body: bytes) -> web.StreamResponse:
    return _error(503, "backlogged", "the backlog is over its limit", {"Retry-After": "1"})


async def broken(request: web.Request, body: bytes) -> web.StreamResponse:
    return _error(500, "internal", "something broke")


async def too_slow(request: web.Request, body: bytes) -> web.StreamResponse:
    return _error(408, "request_timeout", "the body did not arrive within BODY_TIMEOUT_MS")


async def bad_request(request: web.Request, body: bytes) -> web.StreamResponse:
    return _error(400, "bad_json", "the body is not JSON")


async def unauthorized(request: web.Request, body: bytes) -> web.StreamResponse:
    return _error(401, "unauthorized", "unknown or revoked key",
                  {"WWW-Authenticate": 'Bearer realm="logagg"'})


async def forbidden(request: web.Request, body: bytes) -> web.StreamResponse:
    return _error(403, "forbidden", "this key lacks the 'publish' scope (it has read)")


async def rate_limited(request: web.Request, body: bytes) -> web.StreamResponse:
    return _error(429, "rate_limited", "over this key's rate; retry in 0.40 s; none was accepted",
                  {"Retry-After": "1"})


async def drop(request: web.Request, body: bytes) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()  # the client sees the connection go away without an answer
    return web.Response(status=500)


async def stall(request: web.Request, body: bytes) -> web.StreamResponse:
    await asyncio.sleep(0.5)
    return await accept(request, body)


def _error(status: int, error: str, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": error, "message": message, "details": []}
    return web.json_response(body, status=status, headers=headers)


class Ingest:
    """Answers each POST /publish with the next answer of its script, then accepts."""

    def __init__(self, *script: Answer, then: Answer = accept) -> None:
        self.script = list(script)
        self.then = then
        self.attempts = 0
        self.accepted_bodies: list[bytes] = []
        self.content_types: set[str] = set()
        self.authorizations: set[str | None] = set()

    async def publish(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        self.content_types.add(request.content_type)
        self.authorizations.add(request.headers.get("Authorization"))
        body = await request.read()
        await asyncio.sleep(0.001)  # let concurrent requests interleave
        answer = self.script.pop(0) if self.script else self.then
        response = await answer(request, body)
        if response.status == 202:
            self.accepted_bodies.append(body)
        return response


@asynccontextmanager
async def serving(ingest: Ingest) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/publish", ingest.publish)
    async with TestServer(app) as server:
        yield str(server.make_url(""))


async def publish(ingest: Ingest, sent: Workload, *, batch: int = 100, concurrency: int = 1,
                  rate: float | None = None, max_retries: int = 8,
                  request_timeout: float = 30, key: str | None = None) -> Report:
    async with serving(ingest) as url:
        return await send(sent, url=url, batch=batch, concurrency=concurrency, rate=rate,
                          max_retries=max_retries, timeout=request_timeout, key=key)


FIFTY = workload(50, 0.0, ["auth"], seed=1)
KEY = "lgk_" + "k" * 43


async def test_a_503_is_retried_until_the_batch_is_accepted() -> None:
    ingest = Ingest(busy, busy)
    report = await publish(ingest, FIFTY)
    assert ingest.attempts == 3
    assert (report.requests, report.retries) == (3, 2)
    assert (report.events_accepted, report.events_failed) == (50, 0)
    assert report.all_accepted


async def test_retry_after_on_a_503_is_honoured() -> None:
    ingest = Ingest(busy_for_a_second)
    report = await publish(ingest, FIFTY)
    assert ingest.attempts == 2
    assert report.seconds >= 1.0
    assert report.events_accepted == 50


async def test_any_5xx_is_retried() -> None:
    ingest = Ingest(broken)
    report = await publish(ingest, FIFTY)
    assert (ingest.attempts, report.retries, report.events_accepted) == (2, 1, 50)


async def test_a_408_is_retried() -> None:
    # Ingest's edge gave up on a request slow to arrive (services/ingest/server.py).
    ingest = Ingest(too_slow)
    report = await publish(ingest, FIFTY)
    assert (ingest.attempts, report.retries, report.events_accepted) == (2, 1, 50)


async def test_a_400_is_not_retried_and_its_events_count_as_failed() -> None:
    ingest = Ingest(then=bad_request)
    report = await publish(ingest, FIFTY)
    assert ingest.attempts == 1
    assert (report.events_accepted, report.events_failed, report.retries) == (0, 50, 0)
    assert report.errors == ("400 bad_json: the body is not JSON",)
    assert not report.all_accepted


async def test_the_key_goes_in_a_bearer_header_on_every_request() -> None:
    ingest = Ingest(busy)
    report = await publish(ingest, workload(300, 0.0, ["auth"], seed=1), key=KEY,
                           concurrency=2)
    assert (ingest.attempts, report.events_accepted) == (4, 300)
    assert ingest.authorizations == {f"Bearer {KEY}"}
    assert ingest.content_types == {"application/json"}


async def test_without_a_key_no_authorization_header_is_sent() -> None:
    ingest = Ingest()
    await publish(ingest, FIFTY, key="")
    assert ingest.authorizations == {None}


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_a_401_stops_the_run_at_once_and_says_no_key_was_sent(concurrency: int) -> None:
    ingest = Ingest(then=unauthorized)
    report = await publish(ingest, workload(2_000, 0.0, ["auth"], seed=1), batch=50,
                           concurrency=concurrency)
    # Only the requests already in flight when the first 401 came: none after, no retry.
    assert 1 <= ingest.attempts <= concurrency
    assert (report.requests, report.retries) == (ingest.attempts, 0)
    assert (report.events_accepted, report.events_failed) == (0, 2_000)
    assert not report.all_accepted
    assert report.stopped is not None
    assert report.stopped.startswith("401 unauthorized: unknown or revoked key; no key was sent")
    assert "API_KEY" in report.stopped and "--key" in report.stopped
    assert report.to_dict()["stopped"] == report.stopped
    assert f"stopped: {report.stopped}" in report.summary()
    # The refusals of the requests in flight with the first say nothing more.
    assert report.errors == ("401 unauthorized: unknown or revoked key",)


async def test_a_403_stops_the_run_and_the_key_is_never_shown() -> None:
    ingest = Ingest(accept, then=forbidden)
    report = await publish(ingest, workload(500, 0.0, ["auth"], seed=1), key=KEY)
    assert ingest.attempts == 2
    assert (report.events_accepted, report.events_failed, report.retries) == (100, 400, 0)
    assert report.stopped is not None
    assert report.stopped.startswith("403 forbidden: this key lacks the 'publish' scope")
    assert "check the key given by API_KEY or --key" in report.stopped
    assert KEY not in orjson.dumps(report.to_dict()).decode() + report.summary()


async def test_a_batch_waiting_to_retry_is_not_sent_again_after_a_stop() -> None:
    # Worker one's batch gets a 503 asking for a second; meanwhile worker two's gets a 401.
    ingest = Ingest(busy_for_a_second, unauthorized)
    report = await publish(ingest, workload(200, 0.0, ["auth"], seed=1), concurrency=2)
    assert ingest.attempts == 2
    assert (report.events_accepted, report.events_failed, report.retries) == (0, 200, 0)
    assert report.seconds < 1.0  # nobody waited out the Retry-After
    assert report.stopped is not None and report.stopped.startswith("401")


async def test_a_paced_run_stops_without_waiting_for_the_slots_it_had_booked() -> None:
    # 100 events/s in batches of 100: four workers book slots at 0, 1, 2 and 3 s.
    ingest = Ingest(then=unauthorized)
    report = await publish(ingest, workload(1_000, 0.0, ["auth"], seed=1), rate=100,
                           concurrency=4)
    assert (ingest.attempts, report.events_failed) == (1, 1_000)
    assert report.seconds < 1.0


async def test_a_429_is_retried_after_its_retry_after() -> None:
    ingest = Ingest(rate_limited, rate_limited)
    report = await publish(ingest, FIFTY, key=KEY)
    assert ingest.attempts == 3
    assert report.seconds >= 2.0
    assert (report.retries, report.events_accepted, report.stopped) == (2, 50, None)


async def test_only_the_first_few_rejections_are_kept_for_the_report() -> None:
    ingest = Ingest(then=bad_request)
    report = await publish(ingest, workload(100, 0.0, ["auth"], seed=1), batch=5)
    assert (ingest.attempts, report.events_failed) == (20, 100)
    assert 0 < len(report.errors) < 20


async def test_a_dropped_connection_is_retried() -> None:
    ingest = Ingest(drop)
    report = await publish(ingest, FIFTY)
    assert ingest.attempts == 2
    assert (report.retries, report.events_accepted) == (1, 50)


async def test_a_timed_out_request_is_retried() -> None:
    ingest = Ingest(stall)
    report = await publish(ingest, FIFTY, request_timeout=0.2)
    assert ingest.attempts == 2
    assert (report.retries, report.events_accepted) == (1, 50)


async def test_a_batch_that_keeps_failing_is_given_up_after_max_retries() -> None:
    ingest = Ingest(then=broken)
    report = await publish(ingest, FIFTY, max_retries=2)
    assert ingest.attempts == 3
    assert (report.retries, report.events_accepted, report.events_failed) == (2, 0, 50)
    assert report.errors[0].startswith("gave up after 2 retries: 500 internal")


async def test_the_bodies_received_concatenate_to_exactly_the_workload_bytes() -> None:
    sent = workload(1_000, 0.3, ["auth", "billing"], seed=11)
    ingest = Ingest()
    report = await publish(ingest, sent, batch=64)
    assert all(body[:1] == b"[" and body[-1:] == b"]" for body in ingest.accepted_bodies)
    received = b",".join(body[1:-1] for body in ingest.accepted_bodies)
    assert received == b",".join(sent.encoded())
    assert len(ingest.accepted_bodies) == 16
    assert ingest.content_types == {"application/json"}
    assert (report.events_accepted, report.unique_keys, report.duplicates) == (1_000, 700, 300)


async def test_concurrent_workers_send_every_batch_exactly_once_and_count_them_all() -> None:
    sent = workload(2_000, 0.3, ["auth"], seed=12)
    ingest = Ingest(busy, drop, broken)
    report = await publish(ingest, sent, batch=50, concurrency=8)
    events = list(sent.encoded())
    expected = [b"[" + b",".join(events[i:i + 50]) + b"]" for i in range(0, 2_000, 50)]
    assert sorted(ingest.accepted_bodies) == sorted(expected)
    assert (report.events_accepted, report.requests, report.retries) == (2_000, 43, 3)
    assert report.timed_requests == 40


async def test_the_rate_limit_paces_the_requests() -> None:
    report = await publish(Ingest(), workload(500, 0.0, ["auth"], seed=1), rate=2_000,
                           concurrency=4)
    # Five batches of 100 at 2,000 events/s: the last may start 0.2 s after the first.
    assert report.seconds >= 0.2
    assert report.events_accepted == 500


async def test_the_report_gives_throughput_and_latency_percentiles() -> None:
    report = await publish(Ingest(), workload(1_000, 0.3, ["auth"], seed=1))
    figures = report.to_dict()
    assert figures["events_per_second"] > 0
    assert set(figures["latency_ms"]) == {"p50", "p95", "p99"}
    assert figures["latency_ms"]["p50"] <= figures["latency_ms"]["p99"]
    orjson.dumps(figures)  # the --json output must serialize
    for label in ("requests", "events accepted", "events failed", "retries", "unique keys",
                  "duplicates", "seconds", "events per second", "latency p95 ms"):
        assert label in report.summary()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch": 0}, "batch and concurrency must be at least 1"),
        ({"concurrency": 0}, "batch and concurrency must be at least 1"),
        ({"rate": 0.0}, "rate must be positive"),
        ({"max_retries": -1}, "max_retries must be >= 0"),
    ],
)
async def test_bad_arguments_are_refused_before_anything_is_sent(
        options: dict[str, Any], message: str) -> None:
    ingest = Ingest()
    with pytest.raises(ValueError, match=message):
        await publish(ingest, FIFTY, **options)
    assert ingest.attempts == 0


async def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="url must start with http"):
        await send(FIFTY, url="localhost:8080", batch=10, concurrency=1, rate=None)


def test_latency_percentiles_are_nearest_rank_over_the_counted_values() -> None:
    # 97 requests took 1 ms, 2 took 50 ms, 1 took 300 ms: what is held is three values, not 100.
    report = Report(events=100, requests=100, events_accepted=100, events_failed=0, retries=0,
                    unique_keys=100, duplicates=0, seconds=1.0,
                    latencies_ms=((1.0, 97), (50.0, 2), (300.0, 1)), errors=())
    assert report.timed_requests == 100
    assert [report.latency_ms(p) for p in (50, 97, 98, 99, 100)] == [1.0, 1.0, 50.0, 50.0, 300.0]
    empty = Report(events=0, requests=0, events_accepted=0, events_failed=0, retries=0,
                   unique_keys=0, duplicates=0, seconds=0.0, latencies_ms=(), errors=())
    assert empty.latency_ms(50) is None
