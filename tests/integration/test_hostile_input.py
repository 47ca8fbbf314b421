"""Hostile input, thrown by Hypothesis at every endpoint of the real ingest app (SPEC §3, §4).

The app runs on the session's real Redis and PostgreSQL, so a 5xx can only be a bug. Two
properties hold for every request:

1. no input produces a 5xx, and every error answer is `{"error", "message", "details"}` JSON;
2. a 4xx changes no counter (Redis `received`, the stream's length, PostgreSQL's counters,
   `topic_counts`), and a 202 `{"accepted": N}` grows `received` and the stream by exactly N.

And once the consumer code has settled them, `GET /events` lists every event answered 202, in
the order sent, as the client sent it (README: timestamp in UTC with `Z`, integers beyond 64 bits
as doubles), and nothing else.

Hypothesis does not mix with async function-scoped fixtures, so the app serves from its own event
loop in a thread (`LiveIngest`) and each example talks to it with a plain `http.client`
connection, which sends bytes, headers and methods exactly as generated. The requests are always
well-formed HTTP/1.1: what aiohttp's HTTP parser rejects before the app sees it (bad header
characters, unknown methods, over-long request lines) is not the app's answer to give.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import http.client
import json
import math
import string
import threading
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis import Redis as SyncRedis

from services.consumer.loop import Consumer
from services.ingest.app import create_app
from services.ingest.keys import KEYRING, SETTINGS, STORE, STREAM
from services.keys import __main__ as keys
from shared import cursor
from shared.constants import received_key
from shared.entries import StreamId
from shared.settings import Settings
from tests.helpers import ADMIN_KEY

# Small limits, so that 413s (body size and batch length) are reached by cheap examples.
MAX_BODY_BYTES = 16 * 1024
MAX_BATCH_EVENTS = 8
# aiohttp's parser refuses request lines over 8190 bytes before the app sees them.
MAX_TARGET = 8000

examples = hypothesis_settings(
    max_examples=150, deadline=None, database=None,
    # No "explain" phase: it replays a failure hundreds of times for its comments.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large])


# ----------------------------------------------------------------------------------------------
# The app, live on a port, and what we measure around each request


class LiveIngest:
    """The real ingest app, served by an AppRunner on 127.0.0.1 from an event loop in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.port = 0
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live-ingest")

    def __enter__(self) -> LiveIngest:
        self._thread.start()
        if not self._ready.wait(timeout=60):
            raise RuntimeError("the ingest app did not start within 60 s")
        if self._failure is not None:
            self._thread.join()
            raise RuntimeError("the ingest app failed to start") from self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the ingest app did not stop within 60 s"
        if self._failure is not None:
            raise RuntimeError("the ingest app failed while stopping") from self._failure

    def call(self, job: Callable[[web.Application], Awaitable[Any]]) -> Any:
        """Run `job(app)` on the app's own loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(job(self.app), self._loop).result(timeout=60)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self._failure = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


@dataclasses.dataclass(frozen=True)
class Counters:
    received: int
    stream_length: int
    unique_processed: int
    duplicate_dropped: int
    dead_lettered: int


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    def describe(self) -> str:
        return f"{self.status} {self.content_type} {self.body[:500]!r}"


class Ingest:
    """The live app plus synchronous clients of its Redis and PostgreSQL."""

    def __init__(self, live: LiveIngest, redis: SyncRedis, sql: psycopg.Connection[Any]) -> None:
        self.live = live
        self.redis = redis
        self.sql = sql

    def __repr__(self) -> str:
        return f"Ingest(port={self.live.port}, stream={self.settings.stream_key!r})"

    @property
    def settings(self) -> Settings:
        return self.live.settings

    def counters(self) -> Counters:
        key = self.settings.stream_key
        row = self.sql.execute(
            "SELECT coalesce(sum(unique_processed), 0), coalesce(sum(duplicate_dropped), 0),"
            " coalesce(sum(dead_lettered), 0) FROM topic_counts").fetchone()
        assert row is not None
        return Counters(received=int(self.redis.get(received_key(key)) or 0),
                        stream_length=int(self.redis.xlen(key)),
                        unique_processed=int(row[0]), duplicate_dropped=int(row[1]),
                        dead_lettered=int(row[2]))

    def send(self, method: str, target: str, *, headers: Sequence[tuple[str, bytes]] = (),
             body: bytes | None = None, chunked: bool = False, host: bytes | None = None
             ) -> Answer:
        """One request on a fresh connection, exactly as given: no header is added but Host
        (unless `host` replaces it), the body's framing (Content-Length or chunked), and the
        tests' ADMIN_KEY (with AUTH=on) unless the request carries an `Authorization` of its
        own."""
        connection = http.client.HTTPConnection("127.0.0.1", self.live.port, timeout=60)
        try:
            connection.putrequest(method, target, skip_host=host is not None,
                                  skip_accept_encoding=True)
            if host is not None:
                connection.putheader("Host", host)
            if self.settings.auth == "on" and \
                    not any(name.lower() == "authorization" for name, _ in headers):
                connection.putheader("Authorization", f"Bearer {ADMIN_KEY}")
            for name, value in headers:
                connection.putheader(name, value)
            if body is None:
                connection.endheaders()
            elif chunked:
                connection.putheader("Transfer-Encoding", "chunked")
                connection.endheaders(iter([body]) if body else iter(()), encode_chunked=True)
            else:
                connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body)
            response = connection.getresponse()
            return Answer(response.status, response.getheader("Content-Type", ""),
                          response.read())
        finally:
            connection.close()

    def exchange(self, method: str, target: str, **request: Any) -> Answer:
        """Send a request and check both properties around it; return the answer."""
        before = self.counters()
        answer = self.send(method, target, **request)
        after = self.counters()
        # Two lines, so that Hypothesis reports a crash and a misplaced 503 as distinct bugs.
        assert answer.status != 500, f"{method} {target} -> {answer.describe()}"
        assert answer.status < 500, f"{method} {target} -> {answer.describe()}"
        if answer.status >= 400 and method != "HEAD":
            assert_error_body(answer)
        if answer.status == 202:
            accepted = json.loads(answer.body)["accepted"]
            assert isinstance(accepted, int) and accepted >= 1, answer.describe()
            assert after == dataclasses.replace(
                before, received=before.received + accepted,
                stream_length=before.stream_length + accepted), answer.describe()
        else:
            assert after == before, f"{method} {target} -> {answer.describe()}"
        return answer


def assert_error_body(answer: Answer) -> None:
    media_type = answer.content_type.split(";")[0].strip()
    assert media_type == "application/json", f"not JSON: {answer.describe()}"
    body = json.loads(answer.body)
    assert isinstance(body, dict) and set(body) == {"error", "message", "details"}, \
        answer.describe()
    assert isinstance(body["error"], str) and body["error"], answer.describe()
    assert isinstance(body["message"], str), answer.describe()
    assert isinstance(body["details"], list), answer.describe()


@pytest.fixture
def ingest(settings: Settings) -> Iterator[Ingest]:
    small = dataclasses.replace(settings, max_body_bytes=MAX_BODY_BYTES,
                                max_batch_events=MAX_BATCH_EVENTS)
    with LiveIngest(small) as live, SyncRedis.from_url(settings.redis_url) as redis, \
            psycopg.connect(settings.database_url, autocommit=True) as sql:
        yield Ingest(live, redis, sql)


# ----------------------------------------------------------------------------------------------
# JSON, events and almost-events


class Raw:
    """JSON text spliced as is into the encoded body (deep nesting, duplicate keys, 1e400...)."""

    def __init__(self, text: str, label: str | None = None) -> None:
        self.text = text
        self.label = label

    def __repr__(self) -> str:
        return self.label or f"Raw({self.text!r})"


def to_json(value: Any, ascii_only: bool = True) -> str:
    """JSON text, with NaN/Infinity literals and lone surrogates written as `\\udXXX` escapes
    (when `ascii_only`), which a strict parser must refuse."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(str(k), ascii_only)}:{to_json(v, ascii_only)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v, ascii_only) for v in value) + "]"
    return json.dumps(value, allow_nan=True, ensure_ascii=ascii_only)


def encode(value: Any, ascii_only: bool = True) -> bytes:
    # Without `ascii_only` a lone surrogate goes out as its 3 raw bytes: invalid UTF-8.
    return to_json(value, ascii_only).encode("utf-8", "surrogatepass")


FIELDS = ("topic", "event_id", "timestamp", "source", "payload")
EXAMPLE_EVENT = {"topic": "auth", "event_id": "e-1", "timestamp": "2026-11-25T10:00:00Z",
                 "source": "svc-login", "payload": {"level": "info"}}
NAME_FIELDS = ("topic", "event_id", "source")

lone_surrogates = st.integers(0xD800, 0xDFFF).map(chr)
surrogate_text = st.tuples(st.text(max_size=5), lone_surrogates, st.text(max_size=5)).map(
    "".join)
odd_text = st.text(st.characters(categories=["Cc", "Cf", "Co", "Zl", "Zp", "Zs", "Mn", "So",
                                             "Lo"]), min_size=1, max_size=30)
texts = st.text(max_size=30) | odd_text | surrogate_text
huge_ints = st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 2**64, -(2**64), 10**40, 10**400])
json_leaves = (st.none() | st.booleans() | st.integers() | huge_ints
               | st.floats(allow_nan=True, allow_infinity=True) | texts)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=20)

# Valid events hold no NUL character: the store could not keep it, so validation refuses it.
storable = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
finite_leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                 | st.floats(allow_nan=False, allow_infinity=False)
                 | st.text(storable, max_size=30))
finite_json = st.recursive(
    finite_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(storable, max_size=10),
                                                                 inner, max_size=4),
    max_leaves=12)
payloads = st.dictionaries(st.text(storable, max_size=15), finite_json, max_size=5)
names = (st.text(storable, min_size=1, max_size=24)
         | st.text(storable, min_size=255, max_size=255))


def rfc3339(moment: datetime, offset_minutes: int | None) -> str:
    if offset_minutes is None:
        return moment.isoformat() + "Z"
    return moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes))).isoformat()


# The ends of the range, where an offset takes the instant out of the years 1 to 9999.
moments = st.datetimes() | st.sampled_from([datetime.min, datetime.max, datetime(1970, 1, 1)])
offsets = st.none() | st.sampled_from([0, 1, -1, 14 * 60, -12 * 60]) | st.integers(
    -(24 * 60 - 1), 24 * 60 - 1)
def in_utc_range(text: str) -> bool:
    """What validation accepts beyond the format: an offset PostgreSQL can hold (±15:59) and a
    UTC time within the years 1 to 9999."""
    moment = datetime.fromisoformat(text)
    offset = moment.utcoffset()
    if offset is not None and abs(offset) > timedelta(hours=15, minutes=59, seconds=59):
        return False
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


timestamps = st.builds(rfc3339, moments, offsets).filter(in_utc_range)
valid_events = st.fixed_dictionaries({
    "topic": names, "event_id": names, "timestamp": timestamps, "source": names,
    "payload": payloads})

weird_timestamps = st.sampled_from([
    "", "yesterday", "now", "2026-11-25", "10:00:00Z", "2026-11-25T10:00:00",
    "2026-11-25 10:00:00", "2026-11-25T10:00Z", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
    "2026-11-25T24:00:00Z", "2026-11-25T23:59:60Z", "2026-11-25T23:59:61Z",
    "2026-11-25T10:00:00+24:00", "2026-11-25T10:00:00+05", "2026-11-25T10:00:00.Z",
    "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "10000-01-01T00:00:00Z",
    "-0001-01-01T00:00:00Z", "2026-11-25T10:00:00.123456789123456789Z", "2026-11-25t10:00:00z",
    "\uff12\uff10\uff12\uff16-\uff11\uff11-\uff12\uff15T10:00:00Z",
    "2026-11-25T10:00:00Z\n", " 2026-11-25T10:00:00Z",
    "2026-11-25T10:00:00\x00Z", "1e10", "2026-W48-3T10:00:00Z", "2026-329T10:00:00Z",
]) | st.text(alphabet="0123456789-:TZtz+. ", max_size=30) | texts


def nested(depth: int, brackets: bool) -> Raw:
    label = f"nested({depth}, brackets={brackets})"
    if brackets:
        return Raw('{"deep":' + "[" * depth + "]" * depth + "}", label)
    return Raw('{"deep":' + '{"a":' * depth + "{}" + "}" * depth + "}", label)


# orjson parses at most 1024 levels, and serializes at most 254 (an event's payload nested 252
# deep is too deep to serialize): both sides of both limits.
depths = st.sampled_from([2, 100, 250, 251, 252, 253, 254, 255, 256, 300, 1000, 1020, 1021, 1022,
                          1023, 1024, 1025]) | st.integers(1, 1100)
NUMBER_LITERALS = ("1e400", "-1e400", "1" * 400, "-" + "9" * 30, "18446744073709551616",
                   "18446744073709551615", "-9223372036854775809", "0.000000001e-400", "1E+309",
                   "1e20", "1.8446744073709552e19", "-0", "-0.0", "1e-400", "0e0")
extreme_payloads = st.one_of(
    st.builds(nested, depths, st.booleans()),
    st.sampled_from(NUMBER_LITERALS).map(lambda n: Raw('{"n":' + n + "}")),
    st.sampled_from([math.nan, math.inf, -math.inf]).map(lambda x: {"x": x}),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: {"x": x}),
    st.sampled_from(['{"a":1,"a":2}', '{"":{}}', '{"\\u0000":"\\u0000"}', '{"a":"\\ud800"}',
                     '{"a":"\\udc00\\ud800"}', '{"a":"\\ud83d\\ude00"}']).map(Raw),
    st.text(min_size=500, max_size=4000).map(lambda text: {"s": text}),
    st.integers(50, 3000).map(lambda n: {str(i): i for i in range(n)}),
    st.dictionaries(odd_text | surrogate_text, odd_text | surrogate_text, min_size=1, max_size=5),
)


def not_of_type(kind: type) -> st.SearchStrategy[Any]:
    return json_values.filter(lambda value: not isinstance(value, kind))


MUTATIONS = ("wrong_type", "too_long", "empty", "missing", "extra", "weird_timestamp",
             "odd_characters", "lone_surrogate", "deep_payload", "non_finite", "huge_number",
             "duplicate_key", "not_an_object")


@st.composite
def almost_valid_events(draw: st.DrawFn) -> Any:
    """A valid event with one thing wrong, or odd but maybe still valid (control characters)."""
    event: dict[str, Any] = dict(draw(valid_events))
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "wrong_type":
        field = draw(st.sampled_from(FIELDS))
        event[field] = draw(not_of_type(dict if field == "payload" else str))
    elif mutation == "too_long":
        event[draw(st.sampled_from(NAME_FIELDS))] = draw(st.text(min_size=256, max_size=300))
    elif mutation == "empty":
        event[draw(st.sampled_from(FIELDS))] = draw(st.sampled_from(["", {}, [], None]))
    elif mutation == "missing":
        del event[draw(st.sampled_from(FIELDS))]
    elif mutation == "extra":
        event[draw(texts.filter(lambda name: name not in FIELDS))] = draw(json_values)
    elif mutation == "weird_timestamp":
        event["timestamp"] = draw(weird_timestamps)
    elif mutation == "odd_characters":
        event[draw(st.sampled_from((*NAME_FIELDS, "timestamp")))] = draw(odd_text)
    elif mutation == "lone_surrogate":
        field = draw(st.sampled_from(FIELDS))
        if field == "payload":
            event["payload"] = {draw(surrogate_text): draw(surrogate_text)}
        else:
            event[field] = draw(surrogate_text)
    elif mutation == "deep_payload":
        event["payload"] = nested(draw(depths), draw(st.booleans()))
    elif mutation == "non_finite":
        event["payload"] = {"x": draw(st.sampled_from([math.nan, math.inf, -math.inf]))}
    elif mutation == "huge_number":
        event["payload"] = Raw('{"n":' + draw(st.sampled_from(NUMBER_LITERALS)) + "}")
    elif mutation == "duplicate_key":
        field = draw(st.sampled_from(FIELDS))
        twice = to_json(field) + ":" + to_json(draw(json_values))
        return Raw("{" + twice + "," + to_json(event)[1:])
    else:  # not_an_object
        return draw(json_values.filter(lambda value: not isinstance(value, dict)))
    return event


event_likes = valid_events | almost_valid_events() | json_values
batches = st.lists(event_likes, max_size=MAX_BATCH_EVENTS + 3)
publish_bodies = st.one_of(
    event_likes,
    batches,
    batches.map(lambda events: {"events": events}),
    st.tuples(batches, st.dictionaries(texts.filter(lambda k: k != "events"), json_values,
                                       min_size=1, max_size=2)
              ).map(lambda pair: {"events": pair[0], **pair[1]}),
    json_values.map(lambda value: {"events": value}),
)

# ----------------------------------------------------------------------------------------------
# Headers, paths and query strings (always well-formed HTTP)

TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
FIELD_VALUE_BYTES = bytes(range(0x21, 0x7F)) + b" \t" + bytes(range(0x80, 0x100))
# Framing and connection headers are the client's business: generating them only breaks HTTP.
# `Expect` and `Content-Encoding` have tests of their own; `Content-Type` is generated apart.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "upgrade",
           "content-encoding", "expect", "content-type"}

field_values = st.binary(max_size=80).map(
    lambda raw: bytes(FIELD_VALUE_BYTES[b % len(FIELD_VALUE_BYTES)] for b in raw).strip())
header_names = st.sampled_from([
    "Accept", "Accept-Encoding", "Accept-Charset", "Authorization", "Cookie",
    "If-None-Match", "If-Modified-Since", "Range", "Origin", "Referer", "User-Agent",
    "X-Forwarded-For", "X-Forwarded-Proto", "X-Request-Id", "Forwarded", "TE", "Via",
    "Content-Language", "Content-MD5", "Trailer", "Content-Location", "Max-Forwards", "ETag",
]) | st.text(TOKEN_CHARS, min_size=1, max_size=30).filter(lambda n: n.lower() not in FRAMING)
# Unique names: aiohttp's parser refuses a repeated Content-Type, Host, User-Agent... (400).
headers = st.lists(st.tuples(header_names, field_values), max_size=6,
                   unique_by=lambda header: header[0].lower())
hosts = st.none() | st.sampled_from([b"", b"localhost", b"[::1]:80", b"example.com:99999",
                                     b"a..b", b"%00", b"user@host", b"h:-1"]) | field_values

json_content_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/json;charset=UTF-8",
    "Application/JSON", "application/json ; charset=latin-1", "application/json; charset=utf-16",
    "application/json;", "application/json; =x; a", 'application/json; charset="',
    "application/json; boundary=x; charset=utf-8; q=0.5", "application/json\t",
])
NOT_JSON_CONTENT_TYPES = (
    "", ";", "text/plain", "text/json", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/jsonx", "application/json+x",
    "application/ld+json", "application/*", "*/*", "json", "application/json, text/plain",
    "application /json", 'application/json"', "application",
)
other_content_types = st.sampled_from(NOT_JSON_CONTENT_TYPES) | field_values.map(
    lambda raw: raw.decode("latin-1"))
content_types = st.none() | json_content_types | other_content_types

UNRESERVED = string.ascii_letters + string.digits + "-._~"
QUERY_CHARS = UNRESERVED + "!$'()*+,;:@/?%="  # includes '%', so malformed escapes appear too
PATH_CHARS = UNRESERVED + "!$&'()*+,;=:@%"

percent_encoded = st.text(max_size=40).map(lambda text: quote(text, safe=""))
garbage_escapes = st.lists(st.sampled_from(["%", "%z", "%zz", "%0", "%00", "%ff", "%ED%A0%80",
                                            "%C0%80", "%e2%82", "%25", "%2F", "%26", "%3D"]),
                           min_size=1, max_size=4).map("".join)
path_segments = (percent_encoded | st.text(PATH_CHARS, max_size=20) | garbage_escapes
                 | st.sampled_from(["", ".", "..", "%2e%2e", "publish", "events", "stats"]))
paths = st.sampled_from([
    "/", "/publish", "/events", "/stats", "/healthz", "/readyz", "/metrics", "/publish/",
    "//publish", "/PUBLISH", "/events/../stats", "/%2e%2e/stats", "/publish%00", "/publish;x",
    "/static/..%2f..%2fetc/passwd", "/healthz?", "/healthz#x", "/metrics?name[]=1",
    "http://127.0.0.1/healthz", "http://evil.example/stats",
]) | st.lists(path_segments, max_size=6).map(lambda segments: "/" + "/".join(segments))


def percent_encoded_text(raw: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return raw.map(lambda text: quote(text, safe=""))


raw_query_text = st.text(QUERY_CHARS, max_size=40) | garbage_escapes


# Every character `str.isdigit`, not all of them decimal: `int()` refuses "²" or "⑩".
unicode_digits = st.text(st.characters(categories=["Nd", "No"]).filter(str.isdigit),
                         min_size=1, max_size=4)
limit_values = (st.integers(-10, 2000).map(str) | unicode_digits | st.sampled_from([
    "", "0", "1", "100", "1000", "1001", "01", "0001000", "+5", " 5", "5 ", "1e3", "0x10",
    "1_000", "10.0", "-0", "٣", "²", "¹⁰", "\U0001d7d3", "Ⅻ", "⑩", "9" * 30, "1" * 5000]))


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


cursors = st.builds(lambda ms, seq: cursor.encode(StreamId(ms, seq)),
                    st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
after_values = (
    cursors
    | st.sampled_from(["", "=", "====", "djE6", "v1:1-1", "djE6MS0x", "djE6MS0x===",
                       "djE6LTEtMQ", "djI6MS0x", "djE6MS0x\n", "djE6MS0x!"])
    | st.builds(lambda ms, seq: b64(f"v1:{ms}-{seq}"),
                st.integers(2**63 - 2, 2**65), st.integers(-5, 2**65))
    | st.text(max_size=40).map(lambda text: b64("v1:" + text))
    | st.text(max_size=40).map(b64)
    | st.text(max_size=40))
short_text = st.text(max_size=40)
topic_values = st.one_of(short_text, short_text, short_text, st.text(min_size=254, max_size=257),
                         st.sampled_from(["auth", "billing", "\x00", "a\x00b", "%", "*", "'",
                                          "\\", "\u00fcn\u00efc\u00f8d\u00e9"]))
long_values = st.text(QUERY_CHARS, min_size=1000, max_size=1200)
other_keys = st.sampled_from([
    "", "Topic", "LIMIT", "topic[]", "after ", "sort", "offset", "cursor", "topic\x00",
]) | st.text(max_size=12)
any_values = st.text(max_size=40) | topic_values | limit_values | after_values


def known_key(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    encoded = percent_encoded_text(values)
    return st.tuples(st.just(name), st.one_of(encoded, encoded, encoded, raw_query_text))


events_pairs = st.one_of(
    known_key("topic", topic_values), known_key("limit", limit_values),
    known_key("after", after_values),
    st.tuples(percent_encoded_text(other_keys) | raw_query_text,
              percent_encoded_text(any_values) | raw_query_text | long_values))
any_pairs = events_pairs | st.tuples(
    percent_encoded_text(st.text(max_size=12)) | raw_query_text,
    percent_encoded_text(st.text(max_size=40)) | raw_query_text | long_values)


def join_query(draw: st.DrawFn, pairs: list[tuple[str, str]]) -> str:
    """`?k=v&...`, mostly well-shaped; now and then a key without `=`, an empty pair..."""
    if not pairs:
        return draw(st.sampled_from(["", "", "?", "?&", "?="]))
    parts = []
    for key, value in pairs:
        shape = draw(st.sampled_from(["k=v"] * 12 + ["k", "k=", "", "k=v=w"]))
        parts.append({"k=v": f"{key}={value}", "k": key, "k=": f"{key}=", "": "",
                      "k=v=w": f"{key}={value}={value}"}[shape])
    separator = draw(st.sampled_from(["&"] * 6 + [";", "&&"]))
    return draw(st.sampled_from(["", "?"])) + separator.join(parts)


@st.composite
def query_strings(draw: st.DrawFn, pairs: st.SearchStrategy[tuple[str, str]]) -> str:
    return join_query(draw, draw(st.lists(pairs, max_size=5)))


@st.composite
def events_queries(draw: st.DrawFn) -> str:
    """Each of topic, limit and after at most once, mostly; sometimes unknown or repeated keys
    too (which the app refuses first, hiding whatever else is wrong)."""
    pairs = [pair for name, values in (("topic", topic_values), ("limit", limit_values),
                                       ("after", after_values))
             for pair in [draw(known_key(name, values))] if draw(st.booleans())]
    if draw(st.integers(0, 3)) == 0:
        pairs += draw(st.lists(events_pairs, min_size=1, max_size=3))
    return join_query(draw, draw(st.permutations(pairs)))


def with_query(path: str, query: str) -> str:
    if not query:
        return path
    return path + (query if query.startswith("?") else "?" + query)


# ----------------------------------------------------------------------------------------------
# POST /publish


def padded(body: bytes, padding: str) -> bytes:
    """Whitespace keeps JSON JSON: pad to exactly the body limit, or one byte over it."""
    if padding == "to_limit":
        return body + b" " * max(0, MAX_BODY_BYTES - len(body))
    if padding == "over_limit":
        return body + b" " * max(1, MAX_BODY_BYTES + 1 - len(body))
    return body


paddings = st.sampled_from(["none"] * 8 + ["to_limit", "over_limit"])
PUBLISH_STATUSES = {202, 400, 413, 415, 422}


def publish(ingest: Ingest, body: bytes, content_type: str | None, chunked: bool,
            extra: Sequence[tuple[str, bytes]] = ()) -> Answer:
    sent = [("Content-Type", content_type.encode("latin-1"))] if content_type is not None else []
    answer = ingest.exchange("POST", "/publish", headers=[*sent, *extra], body=body,
                             chunked=chunked)
    assert answer.status in PUBLISH_STATUSES, answer.describe()
    if answer.status == 422:
        problems = json.loads(answer.body)["details"]
        assert problems and all(set(p) == {"index", "path", "message"} for p in problems), \
            answer.describe()
    return answer


@examples
@given(body=st.binary(max_size=2000), padding=paddings,
       content_type=json_content_types | content_types, chunked=st.booleans())
def test_no_arbitrary_bytes_body_to_publish_produces_a_5xx(
        ingest: Ingest, body: bytes, padding: str, content_type: str | None,
        chunked: bool) -> None:
    publish(ingest, padded(body, padding), content_type, chunked)


@hypothesis_settings(examples, max_examples=300)  # two families of bodies, 150 each as before
@given(body=json_values | publish_bodies, ascii_only=st.booleans(), padding=paddings,
       content_type=json_content_types, chunked=st.booleans())
def test_no_json_value_almost_valid_event_or_batch_published_produces_a_5xx(
        ingest: Ingest, body: Any, ascii_only: bool, padding: str, content_type: str,
        chunked: bool) -> None:
    publish(ingest, padded(encode(body, ascii_only), padding), content_type, chunked)


@examples
@given(events=st.lists(valid_events, min_size=1, max_size=MAX_BATCH_EVENTS),
       shape=st.sampled_from(["single", "array", "envelope"]), ascii_only=st.booleans(),
       padding=paddings, content_type=json_content_types, chunked=st.booleans())
def test_valid_events_are_accepted_and_counted_exactly_once_each(
        ingest: Ingest, events: list[dict[str, Any]], shape: str, ascii_only: bool,
        padding: str, content_type: str, chunked: bool) -> None:
    if shape == "single":
        events = events[:1]
    body: Any = events[0] if shape == "single" else events if shape == "array" \
        else {"events": events}
    raw = padded(encode(body, ascii_only), padding)
    answer = publish(ingest, raw, content_type, chunked)
    if len(raw) > MAX_BODY_BYTES:
        assert answer.status == 413, answer.describe()
    else:
        assert answer.status == 202, answer.describe()
        assert json.loads(answer.body) == {"accepted": len(events)}


@examples
@given(payload=extreme_payloads, ascii_only=st.booleans(), chunked=st.booleans())
def test_no_valid_event_with_an_extreme_payload_produces_a_5xx(
        ingest: Ingest, payload: Any, ascii_only: bool, chunked: bool) -> None:
    body = encode({**EXAMPLE_EVENT, "payload": payload}, ascii_only)
    publish(ingest, body, "application/json", chunked)


@examples
@given(content_type=content_types, body=st.one_of(
    st.lists(valid_events, min_size=1, max_size=2).map(encode), publish_bodies.map(encode)),
       chunked=st.booleans())
def test_no_content_type_produces_a_5xx_and_only_json_is_accepted(
        ingest: Ingest, content_type: str | None, body: bytes, chunked: bool) -> None:
    answer = publish(ingest, body, content_type, chunked)
    if content_type is None or content_type in NOT_JSON_CONTENT_TYPES:
        assert answer.status == 415, answer.describe()


@examples
@given(events=st.lists(valid_events | almost_valid_events(), min_size=1, max_size=3),
       encoding=st.sampled_from(["identity", "gzip", "gzip-of-nothing", "deflate", "plain"]),
       chunked=st.booleans())
def test_no_content_encoding_produces_a_5xx(
        ingest: Ingest, events: list[Any], encoding: str, chunked: bool) -> None:
    """`Content-Encoding` is decoded by aiohttp before the handler reads the body; a body that
    does not decode is the client's fault. (`plain` sends a body that claims gzip but is not.)"""
    raw = encode(events)
    body, header = {
        "identity": (raw, b"identity"),
        "gzip": (gzip.compress(raw), b"gzip"),
        "gzip-of-nothing": (gzip.compress(b""), b"gzip"),
        "deflate": (zlib.compress(raw), b"deflate"),
        "plain": (raw, b"gzip"),
    }[encoding]
    publish(ingest, body, "application/json", chunked, [("Content-Encoding", header)])


# ----------------------------------------------------------------------------------------------
# GET /events


SEEDED_TOPICS = ("auth", "billing", "ünïcødé")


async def consume_everything(app: web.Application) -> None:
    """What one turn of the real consumer does with every new entry: settle it (isolating the
    ones the store refuses, which stay pending to be dead-lettered later) and ack."""
    settings, stream, store = app[SETTINGS], app[STREAM], app[STORE]
    consumer = Consumer(settings, stream, store)
    await stream.ensure_group()
    while True:
        # The entries are already there: the read returns at once; a short batch is the last.
        batch = await stream.read_new(consumer.name, 1000, 1)
        if batch:
            await consumer.handle(batch, asyncio.Event())
        if len(batch) < 1000:
            return


async def seed_stored_events(app: web.Application) -> None:
    """A few stored events, so that pages, cursors and rows are really read and serialized."""
    events = [{"topic": SEEDED_TOPICS[i % 3], "event_id": f"e-{i}",
               "timestamp": ["2026-11-25T10:00:00Z", "1970-01-01T00:00:00.000001+14:00",
                             "2999-12-31T23:59:59.999999-12:00"][i % 3],
               "source": "svc\x01\u2028", "payload": {"i": i, "nested": {"deep": [[[i]]]},
                                                       "big": 2**64 - 1, "text": "\x01é"}}
              for i in range(12)]
    await app[STREAM].publish([json.dumps(event).encode() for event in events])
    await consume_everything(app)


@pytest.fixture
def seeded(ingest: Ingest) -> Ingest:
    ingest.live.call(seed_stored_events)
    assert ingest.counters().unique_processed == 12
    return ingest


@hypothesis_settings(examples, max_examples=400)  # cheap, and some bugs need a lucky draw
@given(query=events_queries())
def test_no_events_query_string_produces_a_5xx(seeded: Ingest, query: str) -> None:
    target = with_query("/events", query)
    assume(len(target) <= MAX_TARGET)
    answer = seeded.exchange("GET", target)
    if answer.status == 200:
        page = json.loads(answer.body)
        assert set(page) == {"events", "next"}, answer.describe()
        assert page["next"] is None or isinstance(page["next"], str), answer.describe()


@examples
@given(topic=st.sampled_from([None, *SEEDED_TOPICS]), limit=st.integers(1, 13),
       start=st.integers(0, 12))
def test_following_next_cursors_pages_through_the_stored_events_without_a_5xx(
        seeded: Ingest, topic: str | None, limit: int, start: int) -> None:
    """The well-formed side of /events: pages chained by `next` cover the rows exactly once."""
    seen: list[str] = []
    after: str | None = None
    for _ in range(20):
        params = {"limit": str(limit)}
        if topic is not None:
            params["topic"] = topic
        if after is not None:
            params["after"] = after
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        answer = seeded.exchange("GET", f"/events?{query}")
        assert answer.status == 200, answer.describe()
        page = json.loads(answer.body)
        seen += [event["event_id"] for event in page["events"]]
        after = page["next"]
        if after is None:
            break
    expected = [f"e-{i}" for i in range(12) if topic is None or SEEDED_TOPICS[i % 3] == topic]
    assert seen == expected


# ----------------------------------------------------------------------------------------------
# The other read endpoints, and any method on any path


@examples
@given(path=st.sampled_from(["/stats", "/healthz", "/readyz", "/metrics"]),
       query=query_strings(any_pairs),
       extra=headers, content_type=content_types, host=hosts,
       method=st.sampled_from(["GET", "GET", "GET", "HEAD"]))
def test_no_query_string_or_header_on_the_read_endpoints_produces_a_5xx(
        ingest: Ingest, path: str, query: str, extra: list[tuple[str, bytes]],
        content_type: str | None, host: bytes | None, method: str) -> None:
    target = with_query(path, query)
    assume(len(target) <= MAX_TARGET)
    sent = [("Content-Type", content_type.encode("latin-1"))] if content_type is not None else []
    answer = ingest.exchange(method, target, headers=[*sent, *extra], host=host)
    if method == "GET" and answer.status == 200 and path != "/metrics":
        assert isinstance(json.loads(answer.body), dict), answer.describe()


@examples
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
                               "TRACE"]),
       path=paths, query=query_strings(any_pairs),
       extra=headers,
       body=st.none() | st.binary(max_size=200) | valid_events.map(encode) | publish_bodies.map(
           encode),
       content_type=content_types)
def test_no_method_on_any_path_produces_a_5xx(
        ingest: Ingest, method: str, path: str, query: str, extra: list[tuple[str, bytes]],
        body: bytes | None, content_type: str | None) -> None:
    target = with_query(path, query)
    assume(len(target) <= MAX_TARGET)
    sent = [("Content-Type", content_type.encode("latin-1"))] if content_type is not None else []
    ingest.exchange(method, target, headers=[*sent, *extra], body=body)


def last_position(ingest: Ingest) -> StreamId:
    """The stream's last entry: a listing after it shows only what is stored after this point,
    whatever earlier examples left in the store."""
    last = ingest.redis.xrevrange(ingest.settings.stream_key, count=1)
    return StreamId.parse(last[0][0]) if last else StreamId(0, 0)


def utc_z(moment: datetime) -> str:
    """An instant as the API writes it (README): in UTC, with `Z`, microseconds when any."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def kept_number(text: str) -> Decimal:
    """A JSON number as ingest keeps it (README): an integer within 64 bits exactly, any
    other number as the double the JSON parser reads it as."""
    if text.lstrip("-").isdigit() and -(2**63) <= int(text) < 2**64:
        return Decimal(text)
    return Decimal(repr(float(text)))


def strict(value: Any) -> Any:
    """A parsed JSON value in which `true` is not the number 1 (nor `false` 0)."""
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strict(item) for item in value]
    return ("boolean", value) if isinstance(value, bool) else value


def as_listed(event: dict[str, Any]) -> dict[str, Any]:
    """An accepted event, as the client sent it, the way GET /events must give it back."""
    return {"topic": event["topic"], "event_id": event["event_id"],
            "timestamp": utc_z(datetime.fromisoformat(event["timestamp"])),
            "source": event["source"], "payload": event["payload"]}


def listed(ingest: Ingest, target: str) -> list[dict[str, Any]]:
    """The events of one page of GET /events, numbers exact, `received_at` kept."""
    answer = ingest.exchange("GET", target)
    assert answer.status == 200, answer.describe()
    page = json.loads(answer.body, parse_int=Decimal, parse_float=Decimal)
    assert page["next"] is None, answer.describe()
    events: list[dict[str, Any]] = strict(page["events"])
    return events


def publish_consume_and_list(ingest: Ingest, events: list[dict[str, Any]]) -> None:
    """Publish, let the real consumer code store them, then list them back: each event answered
    202 is listed, in the order sent, as it was sent (timestamp normalized to UTC)."""
    # New keys each time: a replayed example must be stored again, not dropped as a duplicate.
    events = [{**event, "event_id": f"{event['event_id'][:200]}#{uuid.uuid4().hex}"}
              for event in events]
    start = last_position(ingest)
    body = encode(events)
    published = ingest.exchange("POST", "/publish", body=body,
                                headers=[("Content-Type", b"application/json")])
    assume(published.status == 202)  # refusals are the publish tests' business
    assert json.loads(published.body) == {"accepted": len(events)}, published.describe()
    # What the client sent, read back from the very bytes it sent.
    sent = json.loads(body, parse_int=kept_number, parse_float=kept_number)
    accepted = [as_listed(event) for event in strict(sent)]
    # Each event was received when Redis appended it: the time in its stream entry id.
    appended = ingest.redis.xrange(ingest.settings.stream_key, min=f"({start}")
    received_at = [utc_z(StreamId.of_entry(raw_id).received_at) for raw_id, _ in appended]
    assert len(received_at) == len(accepted)
    before = ingest.counters()
    ingest.live.call(consume_everything)
    assert ingest.counters() == dataclasses.replace(
        before, unique_processed=before.unique_processed + len(events))

    after_cursor = cursor.encode(start)
    listing = listed(ingest, f"/events?after={after_cursor}&limit=1000")
    assert [event.pop("received_at") for event in listing] == received_at
    assert listing == accepted
    for topic in {event["topic"] for event in events}:
        of_topic = listed(ingest, f"/events?after={after_cursor}&topic={quote(topic, safe='')}")
        assert [event.pop("received_at") for event in of_topic] == [
            at for at, event in zip(received_at, accepted, strict=True)
            if event["topic"] == topic]
        assert of_topic == [event for event in accepted if event["topic"] == topic]


@examples
@given(events=st.lists(valid_events.map(lambda event: {**event, "payload": {}}),
                       min_size=1, max_size=3))
def test_every_accepted_event_is_listed_as_sent_whatever_its_names_and_timestamp(
        ingest: Ingest, events: list[dict[str, Any]]) -> None:
    publish_consume_and_list(ingest, events)


@examples
@given(payloads=st.lists(payloads | extreme_payloads, min_size=1, max_size=3))
def test_every_accepted_event_is_listed_as_sent_whatever_its_payload(
        ingest: Ingest, payloads: list[Any]) -> None:
    publish_consume_and_list(ingest, [{**EXAMPLE_EVENT, "payload": p} for p in payloads])


@examples
@given(method=st.sampled_from(["GET", "POST", "HEAD"]),
       path=st.sampled_from(["/publish", "/events", "/stats", "/healthz", "/readyz", "/metrics",
                             "/nope"]),
       expect=st.sampled_from([b"100-continue", b"100-Continue"]) | field_values)
def test_no_expect_header_produces_a_5xx_or_an_error_that_is_not_json(
        ingest: Ingest, method: str, path: str, expect: bytes) -> None:
    body = encode(EXAMPLE_EVENT) if method == "POST" else None
    ingest.exchange(method, path, body=body, headers=[
        ("Content-Type", b"application/json"), ("Expect", expect)])


# ----------------------------------------------------------------------------------------------
# Keys (SPEC §3a): whatever a client sends as its credential, and whatever a limited key's
# batch holds, no 5xx; only a live key passes, and a batch passes whole or not at all.

credentials = st.one_of(
    field_values,
    st.sampled_from([b"Bearer", b"Bearer ", b"bearer " + ADMIN_KEY.encode(),
                     b"Bearer " + ADMIN_KEY.encode(), b"Bearer  " + ADMIN_KEY.encode(),
                     b"Bearer " + ADMIN_KEY[:-1].encode(), b"Basic " + ADMIN_KEY.encode()]),
    field_values.map(lambda raw: b"Bearer " + raw),
    field_values.map(lambda raw: b"Bearer " + ADMIN_KEY.encode() + raw))


@examples
@given(credential=credentials,
       path=st.sampled_from(["/publish", "/events", "/stats", "/metrics"]))
def test_no_credential_produces_a_5xx_and_only_a_live_key_passes(
        ingest: Ingest, credential: bytes, path: str) -> None:
    body = encode(EXAMPLE_EVENT) if path == "/publish" else None
    answer = ingest.exchange("POST" if body else "GET", path, body=body, headers=[
        ("Content-Type", b"application/json"), ("Authorization", credential)])
    scheme, _, secret = credential.decode("latin-1").partition(" ")
    presents_the_key = scheme.lower() == "bearer" and secret.strip(" \t") == ADMIN_KEY
    assert (answer.status < 400) == presents_the_key, answer.describe()
    if not presents_the_key:
        assert answer.status == 401, answer.describe()


LIMITED_TOPICS = ["auth", "app.*"]
LIMITED_SOURCE = "svc-bound"


@pytest.fixture
def limited_key(ingest: Ingest) -> str:
    """A publish key limited to LIMITED_TOPICS and bound to LIMITED_SOURCE, already held by
    the live app."""
    made = asyncio.run(keys.create(ingest.settings, "limited", scopes=["publish"],
                                   topics=LIMITED_TOPICS, source=LIMITED_SOURCE))

    async def refresh(app: web.Application) -> None:
        ring = app[KEYRING]
        assert ring is not None
        await ring.refresh()

    ingest.live.call(refresh)
    return made.secret


@examples
@given(events=st.lists(
    st.tuples(valid_events,
              st.sampled_from(["auth", "app.web", "app.", "app", "auth2", "billing"]),
              st.sampled_from([LIMITED_SOURCE, "svc-other", LIMITED_SOURCE + " "])),
    min_size=1, max_size=MAX_BATCH_EVENTS))
def test_a_limited_key_publishes_a_batch_only_when_every_event_is_within_its_limits(
        ingest: Ingest, limited_key: str, events: list[tuple[dict[str, Any], str, str]]) -> None:
    batch = [{**event, "topic": topic, "source": source} for event, topic, source in events]
    answer = ingest.exchange("POST", "/publish", body=encode(batch), headers=[
        ("Content-Type", b"application/json"),
        ("Authorization", f"Bearer {limited_key}".encode())])
    within = all((e["topic"] == "auth" or e["topic"].startswith("app."))
                 and e["source"] == LIMITED_SOURCE for e in batch)
    assert answer.status == (202 if within else 403), answer.describe()


@pytest.fixture
def open_ingest(settings: Settings) -> Iterator[Ingest]:
    """The live app with AUTH=off: no key is asked for, none is sent."""
    small = dataclasses.replace(settings, max_body_bytes=MAX_BODY_BYTES,
                                max_batch_events=MAX_BATCH_EVENTS, auth="off")
    with LiveIngest(small) as live, SyncRedis.from_url(settings.redis_url) as redis, \
            psycopg.connect(settings.database_url, autocommit=True) as sql:
        yield Ingest(live, redis, sql)


@examples
@given(body=json_values | publish_bodies, credential=st.none() | credentials,
       content_type=json_content_types)
def test_with_auth_off_no_body_or_credential_produces_a_5xx_or_a_401(
        open_ingest: Ingest, body: Any, credential: bytes | None, content_type: str) -> None:
    headers = [("Content-Type", content_type.encode("latin-1"))]
    if credential is not None:
        headers.append(("Authorization", credential))
    answer = open_ingest.exchange("POST", "/publish", headers=headers, body=encode(body))
    assert answer.status in PUBLISH_STATUSES, answer.describe()
