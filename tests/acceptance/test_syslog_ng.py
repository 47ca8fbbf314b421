"""syslog-ng, a real shipper, with the configuration files of deploy/syslog-ng/: a growing file
tailed into the stack survives a SIGKILL of syslog-ng with every line stored exactly once,
batches refused 429 are sent again until stored, and the syslog source takes RFC 5424 and
RFC 3164 messages.

The kill lands at a certain moment: ingest is frozen (SIGSTOP) while syslog-ng has a whole
batch in ingest's socket, waiting for the answer; syslog-ng is killed then, and ingest let go.
Ingest stores that batch, whose answer nobody reads, so the restarted syslog-ng sends it again
from its reliable disk buffer, with the same ids: they count as duplicates."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from services.keys import __main__ as keys
from services.stack.local import LocalStack
from services.stack.servers import free_port
from tests.acceptance.helpers import freeze, received, thaw, wait_for, wait_for_received

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "syslog-ng"
INSTALL = "apt-get install -y syslog-ng-core syslog-ng-mod-http"
LINES = 3000
WRITE_S = 3.0  # the writer appends LINES lines over about this long


def syslog_ng_binary() -> str:
    found = shutil.which("syslog-ng") or next(
        (path for path in ("/usr/sbin/syslog-ng", "/sbin/syslog-ng") if os.access(path, os.X_OK)),
        None)
    if found is None:
        pytest.fail(f"syslog-ng is not installed: as root on Debian, `{INSTALL}`", pytrace=False)
    return found


class SyslogNg:
    """One syslog-ng in a folder of its own (persist file, disk buffer, control socket), run
    with a configuration file of deploy/syslog-ng/ as it is, set through the environment."""

    def __init__(self, folder: Path, config: str, stack: LocalStack, **env: str) -> None:
        self.folder = folder
        self.config = DEPLOY / config
        (folder / "buffer").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "LOGAGG_CONF_DIR": str(DEPLOY),
                    "LOGAGG_URL": f"{stack.base_url}/publish", "LOGAGG_API_KEY": stack.api_key,
                    "LOGAGG_BUFFER_DIR": str(folder / "buffer"), **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self, *extra: str) -> list[str]:
        return [syslog_ng_binary(), "-f", str(self.config), "-R", str(self.folder / "persist"),
                "-p", str(self.folder / "pid"), "-c", str(self.folder / "ctl"), *extra]

    def check_syntax(self) -> None:
        result = subprocess.run(self.command("--syntax-only"), env=self.env, capture_output=True,
                                text=True, timeout=30, check=False)
        if result.returncode != 0:
            pytest.fail(f"syslog-ng refused {self.config.name} (is syslog-ng-mod-http "
                        f"installed? `{INSTALL}`):\n{result.stderr}", pytrace=False)

    def start(self) -> None:
        self.check_syntax()
        self.starts += 1
        with (self.folder / f"syslog-ng-{self.starts}.log").open("ab") as log:
            # -F: in the foreground, a child of ours; -e: its own log on stderr, into the file
            self.process = subprocess.Popen(self.command("-F", "-e", "--no-caps"), env=self.env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_for(self.answers, "syslog-ng answers on its control socket", timeout_s=30,
                 every_s=0.05)

    def answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, (
            f"syslog-ng exited with {self.process and self.process.returncode}: "
            f"{self.log_tail()}")
        control = Path(syslog_ng_binary()).with_name("syslog-ng-ctl")
        return subprocess.run([str(control), "stats", "-c", str(self.folder / "ctl")],
                              capture_output=True, timeout=10, check=False).returncode == 0

    def log_tail(self) -> str:
        return (self.folder / f"syslog-ng-{self.starts}.log").read_text()[-3000:]

    def buffered_at_start(self) -> int:
        """How many messages its reliable disk buffer held when it last started."""
        for line in (self.folder / f"syslog-ng-{self.starts}.log").read_text().splitlines():
            if "Reliable disk-buffer state loaded" in line:
                return int(line.split("number_of_messages='")[1].split("'")[0])
        raise AssertionError(f"syslog-ng did not load its disk buffer: {self.log_tail()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def shippers() -> Iterator[list[SyslogNg]]:
    """The syslog-ng processes a test starts, stopped after it even if it failed."""
    started: list[SyslogNg] = []
    yield started
    for shipper in started:
        shipper.stop()


def append_lines(path: Path, count: int, over_s: float) -> None:
    """Append `count` numbered lines to `path`, spread over about `over_s` seconds."""
    with path.open("a") as file:
        for number in range(1, count + 1):
            file.write(f"line {number} of {count}\n")
            file.flush()
            if number % 100 == 0:
                time.sleep(over_s * 100 / count)


def tcp_queues(port: int) -> list[tuple[int, int, int, int]]:
    """ESTABLISHED IPv4 connections touching `port` on the loopback, from /proc/net/tcp:
    (local port, remote port, bytes in the send queue, bytes in the receive queue)."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        local_port, remote_port = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if state == "01" and port in (local_port, remote_port):
            tx, rx = (int(value, 16) for value in queues.split(":"))
            rows.append((local_port, remote_port, tx, rx))
    return rows


def request_waiting_in_ingest(port: int) -> bool:
    """A request lies whole in ingest's socket: ingest's end of a connection holds unread
    bytes and the client's end has nothing left to send (the client waits for the answer)."""
    rows = tcp_queues(port)
    server_ends = {remote: rx for local, remote, _, rx in rows if local == port}
    client_ends = {local: tx for local, remote, tx, _ in rows if remote == port}
    return any(rx > 0 and client_ends.get(peer) == 0 for peer, rx in server_ends.items())


def hold_a_batch_in_ingest(redis: Redis, stack: LocalStack, timeout_s: float = 60) -> None:
    """Freeze ingest and return once a batch of syslog-ng lies whole in its socket, ingest
    still frozen. A freeze that caught ingest inside a request (its socket locked, the rest of
    the body not acked) or syslog-ng between batches is undone, and ingest answers what it
    held before the next try."""
    ingest, port = stack.processes["ingest"], stack.settings.ingest_port
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = received(redis, stack)
        freeze(ingest)
        try:
            wait_for(lambda: request_waiting_in_ingest(port), "a batch in ingest's socket",
                     timeout_s=3)
            return
        except AssertionError:
            thaw(ingest)
        wait_for_received(redis, stack, seen + 1, "as ingest answers the batch it held")
    raise AssertionError(f"no batch of syslog-ng held whole in ingest within {timeout_s:.0f}s")


def stored_events(stack: LocalStack, topic: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = ""
    while True:
        with stack.request(f"/events?topic={topic}&limit=1000{after}") as answer:
            page = orjson.loads(answer.read())
        events += page["events"]
        if page["next"] is None:
            return events
        after = f"&after={page['next']}"


def test_a_file_tailed_by_syslog_ng_killed_mid_run_is_stored_exactly_once(
        stack: LocalStack, tmp_path: Path, shippers: list[SyslogNg]) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "app.log"
    path.touch()
    shipper = SyslogNg(tmp_path / "syslog-ng", "tail-files.conf", stack,
                       LOGAGG_FILES_DIR=str(logs), LOGAGG_FILES_PATTERN="*.log")
    shippers.append(shipper)
    shipper.start()
    writer = threading.Thread(target=append_lines, args=(path, LINES, WRITE_S))
    writer.start()
    ingest = stack.processes["ingest"]
    with Redis.from_url(stack.settings.redis_url) as redis:
        wait_for_received(redis, stack, 300, "from syslog-ng before the kill")
        hold_a_batch_in_ingest(redis, stack)
        before = received(redis, stack)
        shipper.kill()
        thaw(ingest)
        # Ingest stores the orphaned batch: the restarted syslog-ng must not add it again.
        wait_for(lambda: received(redis, stack) > before, "the orphaned batch received")
        orphaned = received(redis, stack) - before
        shipper.start()
        # Lines the first syslog-ng had read and not sent: the disk buffer kept them
        assert shipper.buffered_at_start() > orphaned
        writer.join(timeout=60)
        assert not writer.is_alive()
        wait_for(lambda: stack.stats()["unique_processed"] >= LINES,
                 f"{LINES} lines stored", timeout_s=120, every_s=0.2)
    stats = stack.wait_drained(timeout_s=60)
    events = stored_events(stack, "files")
    numbers = sorted(int(event["payload"]["message"].split()[1]) for event in events)
    assert numbers == list(range(1, LINES + 1))  # each line, once
    assert {event["payload"]["file"] for event in events} == {str(path)}
    assert stats["unique_processed"] == LINES
    assert stats["received"] == stats["unique_processed"] + stats["duplicate_dropped"]
    assert stats["pending"] == 0 and stats["dead_lettered"] == 0
    # The orphaned batch, sent again from the disk buffer with its ids, counted as duplicates
    assert stats["duplicate_dropped"] >= orphaned > 0


def rate_limited_key(stack: LocalStack, rate: float, burst: float) -> str:
    """A new `publish` key with that rate, once ingest knows it (an unknown key is a 401,
    which the configuration drops): polled with an empty array, a 400 once the key is known."""
    made = asyncio.run(keys.create(stack.settings, "syslog-ng", scopes=["publish"], rate=rate,
                                   burst=burst))

    def known() -> bool:
        asked = urllib.request.Request(
            f"{stack.base_url}/publish", data=b"[]", headers={
                "Authorization": f"Bearer {made.secret}", "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(asked, timeout=10).close()
        except urllib.error.HTTPError as error:
            return error.code != 401
        return True

    wait_for(known, "ingest knows the new key", timeout_s=30, every_s=0.05)
    return made.secret


def answered(stack: LocalStack, status: str) -> float:
    """How many `POST /publish` ingest answered with that status, from its /metrics."""
    with stack.request("/metrics") as answer:
        text = answer.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "logagg_http_requests_total"
               and sample.labels.get("route") == "/publish"
               and sample.labels.get("status") == status)


def test_batches_refused_429_over_the_keys_rate_are_retried_until_every_line_is_stored(
        stack: LocalStack, tmp_path: Path, shippers: list[SyslogNg]) -> None:
    lines = 1000
    logs = tmp_path / "logs"
    logs.mkdir()
    append_lines(logs / "app.log", lines, over_s=0)
    key = rate_limited_key(stack, rate=250, burst=100)  # a batch of 100 fits, 2.5 a second
    shipper = SyslogNg(tmp_path / "syslog-ng", "tail-files.conf", stack, LOGAGG_API_KEY=key,
                       LOGAGG_FILES_DIR=str(logs), LOGAGG_FILES_PATTERN="*.log")
    shippers.append(shipper)
    shipper.start()
    wait_for(lambda: stack.stats()["unique_processed"] >= lines, f"{lines} lines stored",
             timeout_s=120, every_s=0.2)
    stats = stack.wait_drained(timeout_s=60)
    assert answered(stack, "429") > 0
    assert sorted(int(event["payload"]["message"].split()[1])
                  for event in stored_events(stack, "files")) == list(range(1, lines + 1))
    assert stats["unique_processed"] == lines
    assert stats["received"] == stats["unique_processed"] + stats["duplicate_dropped"]
    assert stats["pending"] == 0


def send_syslog(port: int, frames: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        for frame in frames:
            connection.sendall(frame)


def octet_counted(message: str) -> bytes:
    """RFC 6587 octet counting, the framing of RFC 5424 over TCP."""
    body = message.encode()
    return f"{len(body)} ".encode() + body


def test_syslog_messages_rfc_5424_and_rfc_3164_arrive_as_events(
        stack: LocalStack, tmp_path: Path, shippers: list[SyslogNg]) -> None:
    rfc5424, rfc3164 = free_port(), free_port()
    shipper = SyslogNg(tmp_path / "syslog-ng", "syslog.conf", stack,
                       LOGAGG_SYSLOG_PORT=str(rfc5424), LOGAGG_NETWORK_PORT=str(rfc3164))
    shippers.append(shipper)
    shipper.start()
    send_syslog(rfc5424, [
        octet_counted("<165>1 2026-11-26T10:00:00.000+01:00 web-1 nginx 4242 ID47 - "
                      "GET / 200"),
        octet_counted("<11>1 2026-11-26T10:00:01Z db-1 postgres 77 - - disk full"),
    ])
    send_syslog(rfc3164, [b"<34>Nov 26 10:00:02 mail-1 postfix[99]: queue stuck\n"])
    wait_for(lambda: stack.stats()["unique_processed"] >= 3, "3 syslog messages stored",
             timeout_s=60, every_s=0.2)
    events = {event["payload"]["message"]: event for event in stored_events(stack, "syslog")}
    assert set(events) == {"GET / 200", "disk full", "queue stuck"}
    nginx = events["GET / 200"]
    assert nginx["source"] == "web-1"
    assert nginx["timestamp"] == "2026-11-26T09:00:00Z"  # its own time, +01:00, in UTC
    assert nginx["payload"] == {"message": "GET / 200", "program": "nginx", "pid": "4242",
                                "facility": "local4", "severity": "notice", "host": "web-1",
                                "msgid": "ID47"}
    assert events["disk full"]["payload"]["severity"] == "err"
    postfix = events["queue stuck"]["payload"]
    assert (postfix["program"], postfix["pid"], postfix["facility"], postfix["severity"]) == (
        "postfix", "99", "auth", "crit")
    stats = stack.wait_drained(timeout_s=60)
    assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"]) == (3, 3, 0)

