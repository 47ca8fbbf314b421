"""`logagg bench` runs end to end on a small workload and reports what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson


def test_bench_reports_rates_latencies_ceilings_and_exact_counts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--events", "3000", "--consumers", "1",
         "--results", str(tmp_path)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    for label in ("end-to-end rate", "publish latency p50/p95/p99", "ceiling: PostgreSQL",
                  "ceiling: pipelined XADD", "end_to_end / postgres ceiling", "CPU µs/event"):
        assert label in result.stdout
    assert "Redis appendfsync" in result.stdout
    # Auth on by default, with a key of the run's own, printed, and sent by every request.
    assert re.search(r"^auth on: this run's admin key is lgk_\S{43}$", result.stdout, re.M)
    assert re.search(r"^auth \(API keys\) +on$", result.stdout, re.M)
    [saved] = tmp_path.glob("*.json")
    data = orjson.loads(saved.read_bytes())
    assert data["exact"] is True
    assert data["redis_appendfsync"] == "always"  # the default, as deployed
    assert data["auth"] == "on"
    # 3,000 events, 30% re-sends: pinned here, not taken from the bench's own verdict.
    assert data["workload"]["events"] == 3000
    assert data["workload"]["unique_keys"] == 2100
    assert data["counts"] == {"received": 3000, "unique_processed": 2100,
                              "duplicate_dropped": 900, "dead_lettered": 0, "pending": 0}
    assert data["postgres_ceiling"] > 0 and data["xadd_ceiling"] > 0
    # The ceilings ran over a fixed-size sample, the first events: here all 3,000 of them.
    assert data["ceiling_events"] == 3000
    assert re.search(r"^ceilings measured over +the first 3,000 events \(a fixed-size sample",
                     result.stdout, re.M)
    assert data["peak_rss_mb"]["load generator (this process)"] > 0
    assert data["ratios"]["end_to_end / postgres ceiling"] > 0
    assert data["machine"]["cores"] == os.cpu_count()
    assert set(data["publish_ms"]) == {"p50", "p95", "p99"}
    assert all(v is not None for v in data["batch_ms"].values())
    [plot] = tmp_path.glob("*.png")
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_bench_both_measures_always_then_everysec_each_against_its_own_ceiling(
        tmp_path: Path) -> None:
    """With --auth off: no key asked for, none made, and the results say so."""
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--events", "2000", "--consumers", "1",
         "--redis-appendfsync", "both", "--auth", "off", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    runs = sorted((orjson.loads(path.read_bytes()) for path in tmp_path.glob("*.json")),
                  key=lambda data: data["redis_appendfsync"])
    assert [data["redis_appendfsync"] for data in runs] == ["always", "everysec"]
    assert [data["auth"] for data in runs] == ["off", "off"]
    assert "lgk_" not in result.stdout
    assert len(list(tmp_path.glob("*.png"))) == 2
    lines = result.stdout.splitlines()
    [header] = [line for line in lines if "PostgreSQL ceiling (same run)" in line]
    assert header.startswith("Redis appendfsync")
    rows = lines[lines.index(header) + 1:][:len(runs)]
    for data, row in zip(runs, rows, strict=True):
        assert data["exact"] is True
        assert data["counts"]["received"] == 2000 and data["counts"]["pending"] == 0
        # The summary row of each policy: its own end-to-end rate, its own run's ceiling.
        assert row.split()[0] == data["redis_appendfsync"]
        assert f"{data['end_to_end_rate']:,.0f} events/s" in row
        assert f"{data['postgres_ceiling']:,.0f} events/s" in row
        assert f"{data['ratios']['end_to_end / postgres ceiling']:.2f}" in row
    assert "always ran at" in result.stdout
