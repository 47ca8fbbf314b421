"""What `logagg bench` watches while it runs: CPU time and peak memory of each process (from
/proc), and the pipeline's counts over time (from GET /stats)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from services.stack.local import LocalStack

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    """Direct children of a process (PostgreSQL's backends are the postmaster's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def peak_rss_mb(pid: int) -> float:
    """The most resident memory the process has used (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class CpuMeter:
    """CPU seconds a set of processes spent between `start()` and `stop()`."""

    pids: dict[str, list[int]]
    spent: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        totals = {}
        for name, pids in self.pids.items():
            total = 0.0
            for pid in pids:
                # A backend that ended takes its time with it: a small undercount.
                with contextlib.suppress(OSError):
                    total += cpu_seconds(pid)
            totals[name] = total
        return totals

    def start(self) -> None:
        self._started = self._now()

    def stop(self) -> None:
        ended = self._now()
        self.spent = {name: ended[name] - self._started.get(name, 0.0) for name in ended}


@dataclass
class Sample:
    seconds: float
    received: int
    settled: int
    pending: int


async def sample_stats(stack: LocalStack, samples: list[Sample], stop: asyncio.Event,
                       every_s: float = 0.1) -> None:
    """Record /stats every `every_s` until `stop` is set."""
    started = time.monotonic()
    while not stop.is_set():
        stats = await asyncio.to_thread(_stats, stack)
        if stats is not None:
            samples.append(Sample(time.monotonic() - started, stats["received"],
                                  stats["unique_processed"] + stats["duplicate_dropped"]
                                  + stats["dead_lettered"], stats["pending"]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def _stats(stack: LocalStack) -> dict[str, Any] | None:
    try:
        with stack.request("/stats", timeout=5) as answer:
            stats: dict[str, Any] = orjson.loads(answer.read())
            return stats
    except OSError:
        return None
