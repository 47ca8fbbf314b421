"""Issue 12's curve: how the pipeline's cost moves as history grows.

Runs `logagg bench --events N` for each size (a fresh stack each, one after another, so their
figures are of the same machine in the same hour), then prints, per run: the end-to-end rate,
its PostgreSQL ceiling and the ratio, PostgreSQL's CPU µs per event, the settle rate of the
first and of the last tenth of the events and their ratio (the flatness target: last >= 0.8 x
first), and whether the counts ended exact. Writes the table as JSON and a PNG of the curve
next to the runs' own files.

    .venv/bin/python scripts/bench_curve.py --sizes 100000,1000000,5000000,20000000

Each run's own JSON and PNG are in `<results>/<N>/`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

POSTGRES = "postgres (all backends)"


def run(size: int, results: Path, extra: list[str]) -> dict[str, Any]:
    folder = results / str(size)
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.glob("*.json"))
    command = [sys.executable, "-m", "services.cli", "bench", "--events", str(size),
               "--results", str(folder), "--timeout", str(max(600, size // 2000)), *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=False)
    [written] = set(folder.glob("*.json")) - before
    data: dict[str, Any] = orjson.loads(written.read_bytes())
    first, last = data["tenths"]["first tenth"], data["tenths"]["last tenth"]
    return {"events": size, "end_to_end": data["end_to_end_rate"],
            "postgres_ceiling": data["postgres_ceiling"],
            "ratio": data["ratios"]["end_to_end / postgres ceiling"],
            "postgres_us_per_event": data["cpu_us_per_event"].get(POSTGRES),
            "first_tenth": first, "last_tenth": last, "flatness": last / first,
            "exact": data["exact"], "json": str(written)}


def table(rows: list[dict[str, Any]]) -> str:
    header = ("events", "end to end /s", "PG ceiling /s", "ratio", "PG µs/event",
              "first tenth /s", "last tenth /s", "last/first", "exact")
    lines = [header] + [(
        f"{r['events']:,}", f"{r['end_to_end']:,.0f}", f"{r['postgres_ceiling']:,.0f}",
        f"{r['ratio']:.2f}", f"{r['postgres_us_per_event']:.1f}", f"{r['first_tenth']:,.0f}",
        f"{r['last_tenth']:,.0f}", f"{r['flatness']:.2f}", str(r["exact"])) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths,
                                                                          strict=True))
                     for line in lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["events"] for r in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(sizes, [r["end_to_end"] for r in rows], marker="o", label="end to end")
    top.plot(sizes, [r["first_tenth"] for r in rows], marker="^", label="first tenth")
    top.plot(sizes, [r["last_tenth"] for r in rows], marker="v", label="last tenth")
    top.plot(sizes, [r["postgres_ceiling"] for r in rows], linestyle="--", color="#999",
             label="PostgreSQL ceiling (fixed sample)")
    top.set_ylabel("events/s")
    top.legend()
    top.set_title("logagg bench as history grows")
    bottom.plot(sizes, [r["postgres_us_per_event"] for r in rows], marker="o", color="#c33")
    bottom.set_ylabel("PostgreSQL CPU µs/event")
    bottom.set_xlabel("events in the run")
    bottom.set_xscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,5000000,20000000")
    parser.add_argument("--results", type=Path, default=Path("bench/curve"))
    args, extra = parser.parse_known_args()
    rows = [run(int(size), args.results, extra) for size in args.sizes.split(",")]
    print(table(rows))
    (args.results / "curve.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    plot(rows, args.results / "curve.png")
    print(f"written: {args.results / 'curve.json'} and {args.results / 'curve.png'}")
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
