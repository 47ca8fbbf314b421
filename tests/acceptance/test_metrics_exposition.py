"""Every `/metrics` exposition passes `promtool check metrics`, carries the metrics the
dashboards and alerts are built on, and counts exactly what the stack did: ingest the events
it accepted, the consumers (summed over them) each entry settled once as unique or duplicate,
and redeliveries none in a run without failures, or exactly the entries a killed consumer held
when it was restarted under its name."""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from services.stack.local import LocalStack
from tests.acceptance.helpers import (
    free_ports,
    freeze,
    held_by,
    local_stack,
    publish,
    thaw,
    wait_for,
)
from tests.helpers import event

CONSUMERS = 3
# Nothing is claimed from a live consumer that is merely slow: with ten minutes of idle time
# before a claim, every redelivery in these tests is one the test caused.
CLAIM_IDLE_MS = 600_000

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def stack_with_metrics(scratch: Path) -> Iterator[LocalStack]:
    """Three consumers, consumer i serving /metrics on METRICS_PORT + i (as `logagg up`)."""
    settings = {"metrics_port": free_ports(CONSUMERS), "claim_idle_ms": CLAIM_IDLE_MS}
    with local_stack(scratch, settings=settings, consumers=CONSUMERS) as stack:
        for index in range(CONSUMERS):
            wait_for(functools.partial(serves, consumer_url(stack, index)),
                     f"consumer-{index + 1} serving /metrics", 60, every_s=0.05)
        yield stack


def serves(url: str) -> bool:
    try:
        scrape(url)
    except OSError:  # refused: not listening yet
        return False
    return True


def consumer_url(stack: LocalStack, index: int) -> str:
    return f"http://127.0.0.1:{stack.settings.metrics_port + index}/metrics"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return exposition_of(answer)


def exposition_of(answer: http.client.HTTPResponse) -> str:
    assert answer.headers["Content-Type"].startswith("text/plain")
    return str(answer.read().decode())


def promtool_check(exposition: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    result = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(),
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def parse(exposition: str) -> Samples:
    """Every sample of the exposition by name and labels."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample, which must be there."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} is not in the exposition"
    return samples[key]


def total(expositions: list[Samples], name: str, **labels: str) -> float:
    """The sum over processes of every sample of that name whose labels include `labels`
    (a labelled counter never incremented in a process has no sample there: 0)."""
    wanted = set(labels.items())
    return sum(v for samples in expositions for (n, have), v in samples.items()
               if n == name and wanted <= have)


def checked_ingest(stack: LocalStack) -> Samples:
    with stack.request("/metrics") as answer:  # ingest's asks for the key; a consumer's not
        exposition = exposition_of(answer)
    promtool_check(exposition)
    return parse(exposition)


def checked_consumers(stack: LocalStack) -> list[Samples]:
    expositions = []
    for index in range(CONSUMERS):
        exposition = scrape(consumer_url(stack, index))
        promtool_check(exposition)
        expositions.append(parse(exposition))
    return expositions


def test_expositions_pass_promtool_and_count_exactly_what_was_published(
        stack_with_metrics: LocalStack) -> None:
    stack = stack_with_metrics
    report = publish(stack, "--events", "2000", "--duplicates", "0.3", "--seed", "7")
    assert (report["events_accepted"], report["unique_keys"]) == (2000, 1400)
    assert (report["requests"], report["retries"]) == (20, 0)
    stats = stack.wait_drained(timeout_s=60)
    assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"]) == \
        (2000, 1400, 600)

    ingest = checked_ingest(stack)
    assert value(ingest, "logagg_events_accepted_total") == 2000
    assert value(ingest, "logagg_http_requests_total", route="/publish", status="202") == 20
    assert value(ingest, "logagg_publish_seconds_count") == 20
    # Read from Redis at the scrape: the stack has drained.
    assert value(ingest, "logagg_stream_unacked_entries") == 0
    assert value(ingest, "logagg_stream_lag_entries") == 0
    assert value(ingest, "logagg_oldest_unacked_age_seconds") == 0

    consumers = checked_consumers(stack)
    processed = "logagg_events_processed_total"
    assert total(consumers, processed, result="unique") == 1400
    assert total(consumers, processed, result="duplicate") == 600
    assert total(consumers, processed, result="redelivered") == 0
    assert total(consumers, processed, result="dead_lettered") == 0
    assert total(consumers, "logagg_redeliveries_total") == 0
    # Each of the 2,000 entries went through exactly one batch of one consumer.
    assert total(consumers, "logagg_batch_entries_sum") == 2000
    for samples in consumers:
        batches = value(samples, "logagg_batch_entries_count")
        assert value(samples, "logagg_batch_seconds_count") == batches
        assert sum(total([samples], processed, result=r) for r in ("unique", "duplicate")) \
            == value(samples, "logagg_batch_entries_sum")


def test_a_consumer_killed_holding_entries_and_restarted_under_its_name_counts_each_once(
        stack_with_metrics: LocalStack) -> None:
    """consumer-3 is frozen while blocked in XREADGROUP, so Redis hands it entries it never
    settles; it is killed holding them and started again under its CONSUMER_NAME, resumes
    them: `logagg_redeliveries_total{how="resumed"}` is exactly what it held, and every entry
    is still counted once as unique or duplicate."""
    stack = stack_with_metrics
    victim = "consumer-3"
    name = stack.consumer_names[victim]
    process = stack.processes[victim]
    published = 0
    with Redis.from_url(stack.settings.redis_url) as redis:
        held = 0
        for attempt in range(5):
            # It has settled nothing so far: killing it loses no count of its own.
            assert total([parse(scrape(consumer_url(stack, 2)))],
                         "logagg_events_processed_total") == 0
            # Frozen while Redis has it blocked in XREADGROUP: new entries go to it.
            wait_for(lambda: blocked_in_redis(redis, process.pid), f"{victim} reading", 30)
            freeze(process)
            post(stack, [event(f"resumed-{attempt}-{i}", topic="resumed")
                         for i in range(1000)])
            published += 1000
            held = held_by(redis, stack, victim)
            if held > 0:
                break
            # Its read had ended: let the others settle these, then try again.
            stack.wait_drained(timeout_s=60)
            thaw(process)
        assert held > 0, f"{victim} never held entries while frozen"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert held_by(redis, stack, victim) == held
    port = stack.settings.metrics_port + 2
    stack.start_process("consumer", victim, CONSUMER_NAME=name, METRICS_PORT=str(port))

    report = publish(stack, "--events", "2000", "--duplicates", "0.3", "--seed", "7")
    assert report["events_accepted"] == 2000
    published += 2000
    stats = stack.wait_drained(timeout_s=60)
    unique = published - 600
    assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"]) == \
        (published, unique, 600)

    assert value(checked_ingest(stack), "logagg_events_accepted_total") == published
    consumers = checked_consumers(stack)
    processed = "logagg_events_processed_total"
    assert total(consumers, processed, result="unique") == unique
    assert total(consumers, processed, result="duplicate") == 600
    assert total(consumers, processed, result="redelivered") == 0  # none had been settled
    assert total(consumers, "logagg_redeliveries_total", how="resumed") == held
    assert value(consumers[2], "logagg_redeliveries_total", how="resumed") == held
    assert total(consumers, "logagg_redeliveries_total", how="claimed") == 0
    assert total(consumers, "logagg_batch_entries_sum") == published


def blocked_in_redis(redis: Redis, pid: int) -> bool:
    """Whether Redis has one of that process's connections blocked (CLIENT LIST flag `b`)."""
    ports = {f"127.0.0.1:{port}" for port in tcp_ports(pid)}
    return any(client["addr"] in ports and "b" in client["flags"]
               for client in redis.client_list())


def tcp_ports(pid: int) -> set[int]:
    """Local ports of that process's TCP sockets (its fds' socket inodes in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return {int(fields[1].split(":")[1], 16)
            for fields in (line.split()
                           for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
            if fields[9] in inodes}


def post(stack: LocalStack, events: list[dict[str, object]]) -> None:
    with stack.request("/publish", orjson.dumps(events), timeout=30) as answer:
        assert answer.status == 202
        assert orjson.loads(answer.read()) == {"accepted": len(events)}
