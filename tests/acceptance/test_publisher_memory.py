"""`logagg publish` sends its workload as a stream: the process's peak memory stays flat in the
number of events (issue 12: the whole workload was built in memory before the first request).

The real publisher sends 20,000 events, then 10 times as many, to a real stack; each run's peak
resident memory (ru_maxrss of the child, from `wait4`) is compared. A workload held in a list
took about 4 kB an event (orjson's buffers): 0.8 GB more at 200,000 events. The stream holds a
window of 10,000 originals, so both runs hold about the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from services.stack.local import LocalStack
from tests.acceptance.helpers import publisher_env

SMALL, LARGE = 20_000, 200_000


def publish_with_peak_rss(stack: LocalStack, log: Path, events: int,
                          seed: int) -> tuple[dict[str, Any], int]:
    """Run `logagg publish` to its end; its JSON report and its peak resident memory in bytes."""
    command = [sys.executable, "-m", "services.cli", "publish", "--url", stack.base_url, "--json",
               "--events", str(events), "--duplicates", "0.3", "--seed", str(seed)]
    with log.open("ab") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                   env=publisher_env(stack))
    assert process.stdout is not None
    with process.stdout:
        output = process.stdout.read()  # one line, at the end: the pipe never fills
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, log.read_text()[-3000:]
    report: dict[str, Any] = orjson.loads(output)
    return report, usage.ru_maxrss * 1024  # kB on Linux


def test_the_publishers_peak_memory_stays_flat_from_twenty_thousand_to_200_thousand_events(
        stack: LocalStack, scratch: Path) -> None:
    log = scratch / "publisher.log"
    small, small_rss = publish_with_peak_rss(stack, log, SMALL, seed=1)
    large, large_rss = publish_with_peak_rss(stack, log, LARGE, seed=2)
    print(f"\npeak RSS of logagg publish: {small_rss / 2**20:.0f} MiB at {SMALL:,} events, "
          f"{large_rss / 2**20:.0f} MiB at {LARGE:,}")
    assert (small["events_accepted"], small["unique_keys"]) == (SMALL, 14_000)
    assert (large["events_accepted"], large["unique_keys"]) == (LARGE, 140_000)
    stats = stack.wait_drained(timeout_s=300)
    assert (stats["received"], stats["unique_processed"], stats["pending"]) == (
        SMALL + LARGE, 14_000 + 140_000, 0)
    assert large_rss <= 1.5 * small_rss, (
        f"peak RSS {large_rss} bytes at {LARGE} events, {small_rss} at {SMALL}")
