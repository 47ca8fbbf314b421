"""Chaos: while 40,000 events (30% duplicates) are published at 2,000 events/s, consumers are
killed with SIGKILL every ~2 s and restarted, and, at random moments inside the run, PostgreSQL
is killed (its whole process group) and restarted after 1 s or once /readyz has said 503 if
that takes longer (about 2 s: its store check times out), Redis (append-only file, fsync
always) likewise, and ingest is killed with SIGKILL in the middle of a request and restarted.
/readyz must answer 503 during each server outage and 200 after each disruption. At the end the
counts are exact, nothing is dead-lettered and nothing is pending.

The schedule (which consumer dies, the order of the three big disruptions, every pause) comes
from one seeded RNG: the seed is printed, and LOGAGG_CHAOS_SEED=<seed> replays that schedule (not
the machine's timing). The chaos log is printed whether the test passes or fails, and on failure
the stack's logs are copied out of the scratch folder (which is deleted after the session).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.publisher.simulator import workload
from services.stack.local import LocalStack
from services.stack.servers import PostgresServer, RedisServer
from tests.acceptance.helpers import held_publish_head, local_stack, start_publish

EVENTS = 40_000
UNIQUE = 28_000
BATCH = 100  # the publisher's default, given explicitly: the retry bound below relies on it
SEED_VARIABLE = "LOGAGG_CHAOS_SEED"
OUTAGE_S = 1.0  # how long a killed server stays down: the disruption itself, not a wait
POLL_S = 0.02
BOUND_S = 10.0  # how long any polled condition may take before the test calls it missing
PROBE_TOPIC = "chaos-probe"  # the held request's event: never completed, so never stored


@pytest.fixture
def durable_stack(scratch: Path) -> Iterator[LocalStack]:
    # appendfsync `always`, named here whatever the defaults: with `everysec`, Redis may answer
    # commands whose write(2) it postponed behind a slow background fsync (up to 2 s), and a
    # SIGKILL then loses events that ingest had already answered 202.
    with local_stack(scratch, redis_appendfsync="always") as running:
        yield running


def chaos_seed() -> int:
    """LOGAGG_CHAOS_SEED if set (to replay a run), else a fresh random one."""
    configured = os.environ.get(SEED_VARIABLE, "").strip()
    return int(configured) if configured else secrets.randbits(32)


def readyz(stack: LocalStack) -> tuple[int | None, dict[str, Any]]:
    """/readyz's status and body; None while nothing answers (ingest down or restarting)."""
    try:
        with urllib.request.urlopen(f"{stack.base_url}/readyz", timeout=5) as answer:
            return int(answer.status), orjson.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            body = orjson.loads(error.read())
        except orjson.JSONDecodeError:
            body = {}
        finally:
            error.close()
        return int(error.code), body
    except (urllib.error.URLError, OSError):
        return None, {}


def publish_requests_answered(stack: LocalStack) -> float:
    """`POST /publish` requests this ingest process answered 202, from its own /metrics."""
    with stack.request("/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "logagg_http_requests_total"
                    and sample.labels.get("route") == "/publish"
                    and sample.labels.get("status") == "202"):
                return float(sample.value)
    return 0.0


def until(condition: Callable[[], bool], what: str, timeout_s: float = BOUND_S) -> float:
    """Poll `condition` until it holds; the seconds it took. Fails after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s:.0f}s"
        time.sleep(POLL_S)
    return time.monotonic() - started


class Chaos:
    """The disruptions, at seeded random moments, each logged with its time for the report."""

    def __init__(self, stack: LocalStack, seed: int) -> None:
        self.stack = stack
        self.seed = seed
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.log: list[str] = []
        # server -> (/readyz status, that server's check) first seen 503 after its kill, or the
        # last answer if no 503 came within BOUND_S.
        self.readyz_during_outage: dict[str, tuple[int | None, str]] = {}
        self.ingest_kills = 0

    def note(self, line: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.2f}s {line}")

    def report(self) -> str:
        return "\n".join([f"chaos seed {self.seed} (replay: {SEED_VARIABLE}={self.seed}); log:",
                          *(f"  {line}" for line in self.log)])

    def kill_a_consumer(self) -> None:
        victim = f"consumer-{self.rng.randint(1, 3)}"
        process = self.stack.processes[victim]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.stack.restart_exited()
        self.note(f"SIGKILL {victim}, restarted")

    def kill_postgres(self, sender: subprocess.Popen[bytes]) -> None:
        self.server_outage("postgres", self.stack.postgres, sender)

    def kill_redis(self, sender: subprocess.Popen[bytes]) -> None:
        self.server_outage("redis", self.stack.redis, sender)

    def server_outage(self, name: str, server: PostgresServer | RedisServer,
                      sender: subprocess.Popen[bytes]) -> None:
        assert sender.poll() is None, f"the publish ended before {name} was killed"
        server.kill()  # SIGKILL to the server's whole process group, and waits for it to die
        killed = time.monotonic()
        # The ingest notices asynchronously (a dead pooled connection, a failed ping): poll
        # /readyz, bounded, until it says 503, and keep what it said about this server.
        status: int | None = None
        check = "no answer"
        while time.monotonic() - killed < BOUND_S:
            status, body = readyz(self.stack)
            check = str(body.get("checks", {}).get(name, "no check"))
            if status == 503:
                break
            time.sleep(POLL_S)
        self.readyz_during_outage[name] = (status, check)
        seen_after = time.monotonic() - killed
        # Down for OUTAGE_S, or until the 503 was seen if that took longer: restarting before
        # would let /readyz recover without ever having said it.
        time.sleep(max(0.0, killed + OUTAGE_S - time.monotonic()))
        down_for = time.monotonic() - killed
        server.start()  # returns once it answers (Redis has replayed its append-only file)
        ready_after = self.wait_ready_again()
        self.note(f"SIGKILL {name}; /readyz {status} ({name}: {check}) after {seen_after:.2f}s; "
                  f"restarted after {down_for:.2f}s; /readyz 200 again {ready_after:.2f}s later")

    def kill_ingest_mid_request(self, sender: subprocess.Popen[bytes]) -> None:
        """SIGKILL ingest while a request is provably in flight, then restart it.

        The proof: we hold a request of our own open in the ingest. It is sent with `Expect:
        100-continue`, so the ingest's `100 Continue` shows that this very process has parsed
        its headers and is inside that request, waiting for the body; we send all of the body
        but its last byte, so the request can neither finish nor be appended. Before killing we
        also poll the ingest's own `logagg_http_requests_total{route="/publish",status="202"}`
        until it rises: the publisher's requests are being answered by this process right
        now, so the kill lands under load and cuts the publisher's connections as well (the
        publisher retries; a request of its that was appended but not answered is appended
        again, and the count checks at the end bound that). After the kill the held request
        must get no answer at all: the connection just drops.
        """
        ingest = self.stack.processes["ingest"]
        port = self.stack.settings.ingest_port
        body = b"[" + workload(1, 0.0, [PROBE_TOPIC], seed=self.seed).sample(1)[0] + b"]"
        head = held_publish_head(self.stack, len(body))
        answered_before = publish_requests_answered(self.stack)
        window_opened = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND_S) as probe:
            probe.sendall(head)
            interim = b""
            while b"\r\n\r\n" not in interim:  # each recv is bounded by the socket timeout
                chunk = probe.recv(4096)
                assert chunk, f"ingest closed the probe before answering its headers: {interim!r}"
                interim += chunk
            assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
            probe.sendall(body[:-1])
            until(lambda: publish_requests_answered(self.stack) > answered_before,
                  "the ingest answering the publisher's requests before its kill")
            answered = publish_requests_answered(self.stack) - answered_before
            assert sender.poll() is None, "the publish ended before ingest was killed"
            ingest.send_signal(signal.SIGKILL)
            ingest.wait()
            killed = time.monotonic()
            window = killed - window_opened
            after = interim.partition(b"\r\n\r\n")[2]
            try:
                while chunk := probe.recv(4096):
                    after += chunk
            except ConnectionResetError:
                pass
        assert ingest.returncode == -signal.SIGKILL
        assert after == b"", f"the held request got an answer, so it was not in flight: {after!r}"
        self.ingest_kills += 1
        self.stack.restart_exited()
        self.wait_ready_again()
        self.note(f"SIGKILL ingest mid-request (probe held after 100 Continue, body one byte "
                  f"short; {answered:.0f} publish requests answered in the {window:.2f}s "
                  f"before the kill; the probe's connection dropped unanswered); restarted, "
                  f"/readyz 200 {time.monotonic() - killed:.2f}s after the kill")

    def wait_ready_again(self) -> float:
        """/readyz turns back to 200 once the server (or ingest) is back; the seconds it took."""
        return until(lambda: readyz(self.stack)[0] == 200, "/readyz 200 again", timeout_s=30)

    def run_while(self, sender: subprocess.Popen[bytes]) -> None:
        """A consumer dies on every turn, ~2 s apart; on turns 1, 2 and 3 one of the three big
        disruptions follows it, in seeded order. Turn 3 starts about 8 s (at most 10 s) plus
        two big disruptions into a publish of at least 20 s, so all three land inside the run;
        each checks that the publisher is still running just before its kill."""
        big: list[Callable[[subprocess.Popen[bytes]], None]] = [
            self.kill_postgres, self.kill_redis, self.kill_ingest_mid_request]
        self.rng.shuffle(big)
        self.note("order of the big disruptions: "
                  + ", ".join(disruption.__name__ for disruption in reversed(big)))
        turn = 0
        while sender.poll() is None:
            time.sleep(self.rng.uniform(1.5, 2.5))  # "every ~2 s": a rhythm, not a wait
            if sender.poll() is not None:
                break
            self.kill_a_consumer()
            if turn >= 1 and big:
                big.pop()(sender)
            turn += 1
        self.note(f"publisher exited with {sender.returncode}")
        assert not big, "the publish ended before every big disruption: " + ", ".join(
            disruption.__name__ for disruption in big)


def keep_logs(stack: LocalStack, into: Path) -> Path:
    """Copy the stack's process and server logs out of the scratch folder, which the session
    deletes."""
    kept = into / "stack-logs"
    shutil.copytree(stack.data_dir / "logs", kept, dirs_exist_ok=True)
    for server_log in (stack.redis.data_dir / "redis.log",
                       stack.postgres.data_dir / "postgres.log"):
        if server_log.exists():
            shutil.copy(server_log, kept / server_log.name)
    return kept


def test_counts_are_exact_after_consumers_postgresql_redis_and_ingest_are_killed_under_load(
        durable_stack: LocalStack, tmp_path: Path) -> None:
    stack = durable_stack
    chaos = Chaos(stack, chaos_seed())
    print(f"\nchaos seed {chaos.seed} (replay: {SEED_VARIABLE}={chaos.seed})", flush=True)
    try:
        check_chaos(stack, chaos)
    except BaseException:
        print(f"chaos FAILED; seed {chaos.seed}; stack logs kept in {keep_logs(stack, tmp_path)}",
              flush=True)
        raise
    finally:
        print(chaos.report(), flush=True)


def check_chaos(stack: LocalStack, chaos: Chaos) -> None:
    sender = start_publish(stack, "--events", str(EVENTS), "--duplicates", "0.3",
                           "--batch", str(BATCH), "--rate", "2000", "--max-retries", "30",
                           "--seed", "2026")
    try:
        chaos.run_while(sender)
    finally:
        out, err = sender.communicate(timeout=300)
    report: dict[str, Any] = orjson.loads(out)
    chaos.note(f"publisher: {report['requests']} requests, {report['retries']} retries, "
               f"{report['seconds']}s, errors {report['errors']}")
    assert report["events_accepted"] == EVENTS, err.decode()[-2000:]
    assert report["events_failed"] == 0
    assert report["unique_keys"] == UNIQUE
    # Every attempt beyond one per batch is a retry, and nothing was given up.
    assert report["requests"] == EVENTS // BATCH + report["retries"]
    assert report["retries"] > 0, "the outages were not seen by the publisher"
    assert chaos.ingest_kills == 1
    # Each server outage on its own: /readyz said 503, and blamed that server.
    assert set(chaos.readyz_during_outage) == {"postgres", "redis"}
    for server, (status, check) in chaos.readyz_during_outage.items():
        assert status == 503, f"/readyz never answered 503 while {server} was down: {status}"
        assert check.startswith("unavailable"), f"/readyz did not blame {server}: {check}"

    stats = stack.wait_drained(timeout_s=180)
    chaos.note(f"stats: { {k: v for k, v in stats.items() if k != 'topics'} }")
    extra = stats["received"] - EVENTS
    assert stats["pending"] == 0
    assert stats["alarms"] == [], "a fault injected here is one the system must survive silently"
    assert stats["dead_lettered"] == 0
    assert stats["unique_processed"] == UNIQUE
    # A 202 lost with its connection (ingest killed after the script ran) is retried and
    # appended again: received may exceed the events sent, but only by whole batches (a request
    # is all or nothing), and by at most one batch per retry. A doubled or half-appended
    # request cannot pass this.
    assert extra >= 0, stats
    assert extra % BATCH == 0, f"{extra} extra events is not whole batches: a partial append"
    assert extra <= report["retries"] * BATCH, (
        f"{extra} extra events, more than {report['retries']} retries of {BATCH} could send")
    # The extra copies are duplicates; nothing else may differ.
    assert stats["duplicate_dropped"] == stats["received"] - UNIQUE
    assert PROBE_TOPIC not in stats["topics"]
    with psycopg.connect(stack.settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (UNIQUE,)
