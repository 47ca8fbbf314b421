"""What `logagg bench` prints and keeps: a table, a JSON file with machine info, a PNG plot."""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from services.bench.probes import Sample


@dataclass
class Result:
    workload: dict[str, Any]
    redis_appendfsync: str  # the stack's Redis appendfsync policy
    auth: str  # on: every request carried a key, checked by ingest (AUTH); off: none
    accept_rate: float  # events/s: first send until the last 202
    end_to_end_rate: float  # events/s: first send until pending == 0
    publish_ms: dict[str, float | None]  # p50 / p95 / p99 of POST /publish
    batch_ms: dict[str, float | None]  # p50 / p95 / p99 of a consumer batch
    postgres_ceiling: float
    xadd_ceiling: float
    ceiling_events: int  # both ceilings ran over the workload's first this many events
    counts: dict[str, int]
    exact: bool
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    @property
    def ratios(self) -> dict[str, float]:
        return {"end_to_end / postgres ceiling": self.end_to_end_rate / self.postgres_ceiling,
                "end_to_end / xadd ceiling": self.end_to_end_rate / self.xadd_ceiling}

    @property
    def tenths(self) -> dict[str, float]:
        """Settled events/s over the first and over the last tenth of the run's events, and
        last / first: whether the pipeline slows as history grows (issue 12 wants >= 0.8)."""
        first, last = tenth_rates(self.samples, int(self.workload["events"]))
        return {"first tenth": first, "last tenth": last, "last / first": last / first}


def tenth_rates(samples: list[Sample], events: int) -> tuple[float, float]:
    """Settled events per second over the first and over the last tenth of `events`, from
    the samples of the settled count (interpolated between samples)."""
    def when(count: float) -> float:
        before = Sample(0.0, 0, 0, 0)
        for sample in samples:
            if sample.settled >= count:
                span = sample.settled - before.settled
                share = (count - before.settled) / span if span else 1.0
                return before.seconds + share * (sample.seconds - before.seconds)
            before = sample
        return samples[-1].seconds if samples else 0.0

    tenth = events / 10
    first = tenth / max(when(tenth), 1e-9)
    last = tenth / max(when(events) - when(events - tenth), 1e-9)
    return first, last


def percentiles(values: list[float]) -> dict[str, float | None]:
    ranked = sorted(values)

    def rank(p: float) -> float | None:
        return ranked[min(len(ranked) - 1, int(p / 100 * len(ranked)))] if ranked else None

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99)}


def table(result: Result) -> str:
    def ms(values: dict[str, float | None]) -> str:
        return " / ".join("-" if v is None else f"{v:.1f}" for v in values.values())

    ratios = result.ratios
    rows = [
        ("events (duplicates)", f"{result.workload['events']:,} "
                                f"({result.workload['duplicates']:.0%})"),
        ("Redis appendfsync", result.redis_appendfsync),
        ("auth (API keys)", result.auth),
        ("accept rate", f"{result.accept_rate:,.0f} events/s"),
        # The end-to-end rate, then each ceiling of this same run and the ratio to it.
        ("end-to-end rate", f"{result.end_to_end_rate:,.0f} events/s"),
        ("ceilings measured over", f"the first {result.ceiling_events:,} events "
                                   "(a fixed-size sample, whatever the run's size)"),
        ("ceiling: PostgreSQL dedup insert", f"{result.postgres_ceiling:,.0f} events/s"),
        ("end_to_end / postgres ceiling", f"{ratios['end_to_end / postgres ceiling']:.2f}"),
        ("ceiling: pipelined XADD", f"{result.xadd_ceiling:,.0f} events/s"),
        ("end_to_end / xadd ceiling", f"{ratios['end_to_end / xadd ceiling']:.2f}"),
        ("publish latency p50/p95/p99", f"{ms(result.publish_ms)} ms"),
        ("consumer batch p50/p95/p99", f"{ms(result.batch_ms)} ms"),
        ("settled/s: first tenth, last tenth", "{:,.0f}, {:,.0f} (last / first {:.2f})".format(
            *result.tenths.values())),
        ("counts", ("exact " if result.exact else "OFF ") + str(result.counts)),
        *((f"CPU µs/event: {name}", f"{us:.1f}") for name, us in result.cpu_us_per_event.items()),
        *((f"peak RSS MB: {name}", f"{mb:.0f}") for name, mb in result.peak_rss_mb.items()),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def comparison(results: list[Result]) -> str:
    """Runs of the same workload under different Redis appendfsync policies, side by side:
    each end-to-end rate next to the PostgreSQL ceiling of its own run (its own stack), then
    each run against the first."""
    header = ("Redis appendfsync", "end to end", "PostgreSQL ceiling (same run)", "ratio",
              "publish p99", "CPU µs/event: redis")
    rows = [header]
    for result in results:
        p99 = result.publish_ms.get("p99")
        rows.append((
            result.redis_appendfsync, f"{result.end_to_end_rate:,.0f} events/s",
            f"{result.postgres_ceiling:,.0f} events/s",
            f"{result.ratios['end_to_end / postgres ceiling']:.2f}",
            "-" if p99 is None else f"{p99:.1f} ms",
            f"{result.cpu_us_per_event.get('redis', 0.0):.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in rows]
    first = results[0]
    for other in results[1:]:
        lines.append(
            f"{first.redis_appendfsync} ran at {first.end_to_end_rate / other.end_to_end_rate:.2f}"
            f" times the end-to-end rate of {other.redis_appendfsync} (one run each: repeat, "
            f"interleaved, before reading much into a few percent)")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def version(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split()
    return {"cores": os.cpu_count(), "memory_gb": round(int(meminfo[1]) / 2**20, 1),
            "cpu": _cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "redis": version("redis-server", "--version")}


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def save(result: Result, folder: Path, extra: dict[str, Any]) -> tuple[Path, Path]:
    """Write `<stamp>.json` and `<stamp>.png` into `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    data = {**asdict(result), "ratios": result.ratios, "tenths": result.tenths,
            "machine": machine(), **extra}
    json_path = folder / f"{stamp}.json"
    json_path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    png_path = folder / f"{stamp}.png"
    plot(result, png_path)
    return json_path, png_path


def plot(result: Result, path: Path) -> None:
    """Throughput (settled events/s) and pending over the run's time."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    samples = result.samples
    times = [s.seconds for s in samples]
    rates = [0.0] + [
        (b.settled - a.settled) / (b.seconds - a.seconds) if b.seconds > a.seconds else 0.0
        for a, b in itertools.pairwise(samples)]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    top.plot(times, rates, color="#2f7de1")
    top.axhline(result.postgres_ceiling, color="#999", linestyle="--", linewidth=1,
                label=f"PostgreSQL ceiling {result.postgres_ceiling:,.0f}/s")
    top.set_ylabel("settled events/s")
    top.legend(loc="upper right")
    top.set_title(f"logagg bench: {result.workload['events']:,} events, Redis appendfsync "
                  f"{result.redis_appendfsync}, auth {result.auth}, "
                  f"end to end {result.end_to_end_rate:,.0f}/s")
    bottom.plot(times, [s.pending for s in samples], color="#8a5cd1")
    bottom.set_ylabel("pending")
    bottom.set_xlabel("seconds since the first send")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
