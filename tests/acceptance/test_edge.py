"""The edge of the real `logagg ingest` process (uvloop, SO_REUSEPORT, its signal handling): a
connection past MAX_CONNECTIONS gets its 503 while the others are served, slow clients are cut
off, SIGTERM still stops it cleanly, and its last line counts what it turned away.

tests/integration/test_edge.py covers each limit in detail, on the app served in-process."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis

from services.stack.local import LocalStack
from tests.acceptance.helpers import local_stack, received, wait_for
from tests.helpers import event

CAP = 3
TIMEOUT_S = 1.0


def request_head(method: str, path: str, *, length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {length}"]
    return "".join(f"{line}\r\n" for line in lines).encode() + b"\r\n"


HEALTHZ = request_head("GET", "/healthz")


@pytest.fixture
def capped(scratch: Path) -> Iterator[LocalStack]:
    # AUTH off: the edge acts before any key is looked at, and this test is about the edge.
    limits = {"max_connections": CAP, "header_timeout_ms": int(TIMEOUT_S * 1000),
              "body_timeout_ms": int(TIMEOUT_S * 1000), "keepalive_timeout_ms": 60_000,
              "auth": "off"}
    with local_stack(scratch, settings=limits, consumers=0) as running:
        yield running


def connect(stack: LocalStack) -> socket.socket:
    return socket.create_connection(("127.0.0.1", stack.settings.ingest_port), timeout=10)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One answer: status, headers (names in lower case), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer; got {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split(" ")[1]), headers, body


def until_closed(sock: socket.socket, within_s: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(within_s)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def error_of(data: bytes) -> tuple[int, str]:
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ", 2)[1]), orjson.loads(body)["error"]


def test_ingest_refuses_connections_past_its_cap_and_cuts_slow_clients(
        capped: LocalStack) -> None:
    stack = capped
    held = [connect(stack) for _ in range(CAP)]
    try:
        for sock in held:
            sock.sendall(HEALTHZ)
            assert answer(sock)[0] == 200
        extra = connect(stack)
        extra.sendall(HEALTHZ)  # sent at once, as a client would: the refusal still arrives
        status, headers, body = answer(extra)
        assert (status, orjson.loads(body)["error"]) == (503, "too_many_connections")
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert until_closed(extra, within_s=5)[0] == b""
        extra.close()
        for sock in held:  # the capped ones are still served
            sock.sendall(HEALTHZ)
            assert answer(sock)[0] == 200
    finally:
        for sock in held:
            sock.close()

    def served() -> bool:
        with connect(stack) as sock:
            sock.sendall(HEALTHZ)
            return answer(sock)[0] == 200

    wait_for(served, "a connection served once the others closed", timeout_s=10, every_s=0.05)

    with connect(stack) as slow_headers, connect(stack) as slow_body:
        slow_headers.sendall(b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        body = orjson.dumps([event("never-whole")])
        slow_body.sendall(request_head("POST", "/publish", length=len(body)) + body[:-1])
        for sock in (slow_headers, slow_body):
            data, took = until_closed(sock, within_s=3 * TIMEOUT_S + 1)
            assert error_of(data) == (408, "request_timeout"), data
            assert took < 3 * TIMEOUT_S + 1

    ingest = stack.processes["ingest"]
    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(timeout=30) == 0
    with Redis.from_url(stack.settings.redis_url) as redis:
        assert received(redis, stack) == 0
    lines = [orjson.loads(line) for line in
             (stack.data_dir / "logs" / "ingest.log").read_text().splitlines()
             if line.startswith("{")]
    last: dict[str, Any] = lines[-1]
    assert last["action"] == "ingest_stop"
    assert last["connections_refused"] >= 1  # the poll above may have met the cap too
    assert last["header_timeouts"] == 1 and last["body_timeouts"] == 1
