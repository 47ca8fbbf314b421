"""Graceful shutdown: SIGTERM or SIGINT lets every process finish what it holds, exit 0, and
lose nothing; the publisher's retries carry the rest over to the restarted process.

Each signal lands at a moment work is provably in flight, and the counts are pinned: a graceful
stop loses no answer, so nothing is sent twice and `received` is exactly what was published."""

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
from tests.acceptance.helpers import (
    actions_in,
    freeze,
    held_by,
    held_publish_head,
    local_stack,
    logged_actions,
    received,
    signal_while_holding,
    start_publish,
    thaw,
    wait_for,
    wait_for_received,
)
from tests.helpers import event

EVENTS = 10_000
UNIQUE = 7_000
BATCH = 100  # the publisher's default: 100 requests
IN_FLIGHT = 10  # events of our own request, in flight across ingest's stop
STUCK_S = 1.0  # how long Redis stays frozen after ingest began to stop


class InFlightRequest:
    """A POST /publish sent by hand, with `Expect: 100-continue`: ingest's `100 Continue` proves
    the request reached its handler before the body is sent."""

    def __init__(self, stack: LocalStack, events: list[dict[str, Any]]) -> None:
        self.port = port = stack.settings.ingest_port
        self.body = orjson.dumps(events)
        self._rest = b""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(held_publish_head(stack, len(self.body)))
        interim = self._read_until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim

    def send_body(self) -> None:
        self.sock.sendall(self.body)

    def body_read_by_ingest(self) -> bool:
        """Every byte we sent was acknowledged by ingest's kernel (none left in our send queue)
        and read by ingest (none left in its receive queue)."""
        ours = self.sock.getsockname()[1]
        return tcp_queues(ours, self.port)[0] == 0 and tcp_queues(self.port, ours)[1] == 0

    def answer(self) -> tuple[int, dict[str, Any]]:
        """The status and the JSON body of the answer."""
        head = self._read_until(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        body = self._rest
        while len(body) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "ingest closed the connection before the whole answer"
            body += chunk
        answer: dict[str, Any] = orjson.loads(body[:length])
        return status, answer

    def close(self) -> None:
        self.sock.close()

    def _read_until(self, end: bytes) -> bytes:
        data = self._rest
        while end not in data:
            chunk = self.sock.recv(65536)
            assert chunk, f"ingest closed the connection without an answer; got {data!r}"
            data += chunk
        head, self._rest = data.split(end, 1)
        return head + end


def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int]:
    """(send queue, receive queue) in bytes of this machine's TCP socket from `local_port` to
    `remote_port`, from /proc/net/tcp: bytes not yet acknowledged by the peer, and bytes
    received but not yet read by the process."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, (tx, rx) = fields[1], fields[2], fields[4].split(":")
        if (int(local.split(":")[1], 16) == local_port
                and int(remote.split(":")[1], 16) == remote_port):
            return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no TCP socket from port {local_port} to {remote_port}")


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def appends_waiting_in_redis(redis_port: int) -> int:
    """Publisher appends (100 events, over 22 KB each) that Redis has received and not read:
    its sockets' receive queues that big. Our own request's append and the consumers'
    commands (an XACK of 200 ids is under 5 KB) are smaller."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (int(fields[1].split(":")[1], 16) == redis_port
                and int(fields[4].split(":")[1], 16) >= 16_384):
            count += 1
    return count


@pytest.fixture
def stack_without_backlog_check(scratch: Path) -> Iterator[LocalStack]:
    """MAX_BACKLOG=0: no backlog read before the append. A request stuck on that read has
    appended nothing, so only with it off is every request stuck in Redis an append that will
    happen, whose answer must then reach the publisher."""
    with local_stack(scratch, settings={"max_backlog": 0}) as running:
        yield running


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ingest_stopped_under_load_exits_0_and_loses_no_event(
        stack_without_backlog_check: LocalStack, signum: int, tmp_path: Path) -> None:
    """The signal comes while requests are provably inside ingest's handlers: Redis is frozen
    (SIGSTOP), so every handler waits on it; a publisher's append is waiting unread in one of
    Redis's sockets (it will run when Redis resumes), and our own request's body has been read
    by ingest. Then Redis is let go: each request must get its answer, or the publisher would
    send its batch again and `received` would end above what was sent."""
    stack = stack_without_backlog_check
    log = tmp_path / "publisher.log"
    sender = start_publish(stack, "--events", str(EVENTS), "--duplicates", "0.3",
                           "--rate", "2000", "--seed", "5", "--max-retries", "30",
                           log=log, LOG_LEVEL="DEBUG")  # DEBUG: a line per retry
    ingest = stack.processes["ingest"]
    redis_server = stack.redis.process
    assert redis_server is not None
    port = stack.settings.ingest_port
    redis_port = stack.redis.port
    with Redis.from_url(stack.settings.redis_url) as redis:
        # Requests are being answered: `received` rises.
        first = wait_for_received(redis, stack, 1, "from the publisher")
        wait_for_received(redis, stack, first + 1, "again (requests keep being answered)")
        ours = InFlightRequest(stack, [event(f"in-flight-{i}", topic="in-flight")
                                      for i in range(IN_FLIGHT)])
        try:
            freeze(redis_server)
            try:
                wait_for(lambda: appends_waiting_in_redis(redis_port) > 0,
                         "a publisher request stuck at its append", 10)
                ours.send_body()
                wait_for(ours.body_read_by_ingest, "ingest reads our request's body", 10)
                ingest.send_signal(signum)
                wait_for(lambda: refuses_connections(port), "ingest stops listening", 5)
                # Its appends stay stuck for a while, well inside the 10 s ingest grants the
                # requests in flight: it must wait for them, not give up and exit.
                hold_until = time.monotonic() + STUCK_S
                while time.monotonic() < hold_until:
                    assert ingest.poll() is None, "ingest exited with requests in flight"
                    time.sleep(0.01)
            finally:
                thaw(redis_server)
            assert ours.answer() == (202, {"accepted": IN_FLIGHT}), \
                "a request in flight when the stop came gets its answer"
        finally:
            ours.close()
        assert ingest.wait(timeout=30) == 0
        at_exit = received(redis, stack)
        # With ingest down, the publisher meets a closed port and has to send again.
        wait_for(lambda: "publish_retry" in actions_in(log), "a publisher retry", 30)
    assert logged_actions(stack, "ingest")[-1] == "ingest_stop"
    assert at_exit < EVENTS + IN_FLIGHT, "the publisher had finished before the stop"
    stack.restart_exited()
    out, _ = sender.communicate(timeout=120)
    report: dict[str, Any] = orjson.loads(out)

    assert report["events_accepted"] == EVENTS
    assert report["events_failed"] == 0 and report["errors"] == []
    # Every retry was logged, and each is one request more than the 100 batches.
    assert report["retries"] == actions_in(log).count("publish_retry") > 0
    assert report["requests"] == EVENTS // BATCH + report["retries"]
    stats = stack.wait_drained(timeout_s=120)
    assert at_exit < stats["received"], "the rest went to the restarted ingest"
    # No answer was lost, so nothing was sent twice: received is exactly what was published.
    assert stats["received"] == EVENTS + IN_FLIGHT
    assert stats["unique_processed"] == UNIQUE + IN_FLIGHT
    assert stats["duplicate_dropped"] == EVENTS - UNIQUE
    assert stats["dead_lettered"] == 0
    assert stats["pending"] == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_consumers_stopped_under_load_exit_0_holding_nothing(
        stack: LocalStack, signum: int) -> None:
    sender = start_publish(stack, "--events", str(EVENTS), "--duplicates", "0.3",
                           "--rate", "2000", "--seed", "5")
    names = [f"consumer-{index}" for index in (1, 2, 3)]
    with Redis.from_url(stack.settings.redis_url) as redis:
        # Each gets the signal while it holds entries (frozen, counted, signalled, let go).
        held = {name: signal_while_holding(redis, stack, name, signum) for name in names}
        for name in names:
            assert stack.processes[name].wait(timeout=30) == 0
            assert held_by(redis, stack, name) == 0, f"{name} settled and acked its batch"
            assert logged_actions(stack, name)[-1] == "consumer_summary"
    assert all(count > 0 for count in held.values()), held
    stack.restart_exited()
    out, _ = sender.communicate(timeout=120)
    report: dict[str, Any] = orjson.loads(out)
    assert report["events_accepted"] == EVENTS
    # Ingest never stopped: not one request needed a second try.
    assert report["retries"] == 0 and report["requests"] == EVENTS // BATCH
    stats = stack.wait_drained(timeout_s=120)
    assert stats["received"] == EVENTS
    assert stats["unique_processed"] == UNIQUE
    assert stats["duplicate_dropped"] == EVENTS - UNIQUE
    assert stats["dead_lettered"] == 0
    assert stats["pending"] == 0
