"""`logagg bench`: throughput and latency of the whole pipeline, next to two ceilings measured
on the same servers in the same run.

It starts its own stack (Redis with its append-only file, `appendfsync always` unless
`--redis-appendfsync` says otherwise; durable PostgreSQL; one ingest; N consumers) in a
temporary folder, measures the ceilings over the workload's first events (a fixed-size sample,
`ceilings.SAMPLE_EVENTS`), publishes the workload in process as a stream made while it is sent
(the load generator shares the machine, as it would in a test rig, and its memory stays flat
whatever `--events`), waits until nothing is pending, and reports: a table on stdout, a JSON
file and a PNG plot in `bench/results/`.

`--redis-appendfsync both` measures `always`, then `everysec`, each on a fresh stack with its
own ceilings, and ends with the two side by side: what durability costs on this machine.

With AUTH=on (the default; `--auth off` to compare), the stack makes an admin key, printed at
the start, and every request of the run sends it, as a deployment's clients would.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from services.bench import ceilings, probes, report
from services.publisher.sender import batches, send
from services.publisher.simulator import DEFAULT_TOPICS, workload
from services.stack.local import LocalStack
from services.stack.servers import APPENDFSYNC_POLICIES, DEFAULT_APPENDFSYNC, free_port
from shared.settings import Settings

# Events made into requests before the clock starts (see `bench`): the whole reference run.
MADE_AHEAD_EVENTS = 100_000
# `--redis-appendfsync both`: the durable default, then the cheaper policy.
BOTH = "both"
BOTH_POLICIES = ("always", "everysec")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--duplicates", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--ingests", type=int, default=1,
                        help="ingest processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--results", type=Path, default=Path("bench/results"),
                        help="folder for the JSON and PNG of each run")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for pending to reach 0")
    parser.add_argument("--auth", choices=("on", "off"), default=None,
                        help="API keys asked for and checked (default: AUTH, on); 'off' to "
                             "measure what checking them costs")
    parser.add_argument(
        "--redis-appendfsync", choices=[*APPENDFSYNC_POLICIES, BOTH],
        default=DEFAULT_APPENDFSYNC,
        help="Redis's appendfsync policy for this run (default: %(default)s, as deployed); "
             f"'{BOTH}': {' then '.join(BOTH_POLICIES)}, each on a fresh stack with its own "
             "ceilings, then the two side by side")


def run(settings: Settings, args: argparse.Namespace) -> int:
    policies = BOTH_POLICIES if args.redis_appendfsync == BOTH else (args.redis_appendfsync,)
    results: list[report.Result] = []
    for policy in policies:
        result = asyncio.run(bench(settings, args, policy))
        if results:
            print()
        print(report.table(result))
        json_path, png_path = report.save(result, args.results, {"arguments": {
            k: str(v) for k, v in vars(args).items() if k not in {"run"}}})
        print(f"written: {json_path} and {png_path}", flush=True)
        results.append(result)
    if len(results) > 1:
        print()
        print(report.comparison(results))
    return 0 if all(result.exact for result in results) else 1


async def bench(settings: Settings, args: argparse.Namespace,
                appendfsync: str) -> report.Result:
    work = workload(args.events, args.duplicates, list(DEFAULT_TOPICS), args.seed)
    stack_settings = dataclasses.replace(settings, ingest_port=free_port(), metrics_port=0,
                                         auth=args.auth or settings.auth)
    with tempfile.TemporaryDirectory(prefix="logagg-bench-") as folder, LocalStack(
            stack_settings, Path(folder), redis_port=free_port(), postgres_port=free_port(),
            consumers=args.consumers, ingests=args.ingests,
            redis_appendfsync=appendfsync) as stack:
        print(f"auth {stack.settings.auth}" + (
            f": this run's admin key is {stack.api_key}" if stack.api_key else ""), flush=True)
        sample = work.sample(ceilings.SAMPLE_EVENTS)
        pg_ceiling = await asyncio.to_thread(
            ceilings.postgres_ceiling, stack.settings.database_url, sample)
        xadd_ceiling = await ceilings.xadd_ceiling(stack.redis.url, sample)
        ceiling_events = len(sample)
        del sample  # the run sends its events as a stream, made again from the seed
        # The first requests made before the clock starts, as the whole workload was before
        # it streamed: at 100,000 events (the reference run) the load generator then only
        # sends, as it did; a longer run makes the rest while it sends. A fixed number, so the
        # bench's memory stays flat in N.
        bodies = batches(work.encoded(), args.batch)
        made_ahead = list(itertools.islice(bodies, max(1, MADE_AHEAD_EVENTS // args.batch)))
        meter = probes.CpuMeter(_processes(stack))
        samples: list[probes.Sample] = []
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(probes.sample_stats(stack, samples, stop_sampling))
        meter.start()
        started = time.monotonic()
        sent = await send(work, url=stack.base_url, batch=args.batch,
                          concurrency=args.concurrency, rate=None, key=stack.api_key,
                          bodies=itertools.chain(made_ahead, bodies))
        del made_ahead
        accepted_at = time.monotonic()
        stats = await asyncio.to_thread(stack.wait_drained, args.timeout)
        drained_at = time.monotonic()
        meter.stop()
        stop_sampling.set()
        await sampler
        samples.append(probes.Sample(drained_at - started, stats["received"],
                                     stats["received"], 0))
        return report.Result(
            workload={"events": work.events, "unique_keys": work.unique_keys,
                      "duplicates": args.duplicates, "batch": args.batch,
                      "concurrency": args.concurrency, "consumers": args.consumers,
                      "ingests": args.ingests},
            redis_appendfsync=appendfsync,
            auth=stack.settings.auth,
            accept_rate=work.events / (accepted_at - started),
            end_to_end_rate=work.events / (drained_at - started),
            publish_ms={f"p{p}": sent.latency_ms(p) for p in (50, 95, 99)},
            batch_ms=report.percentiles(_batch_ms(stack)),
            postgres_ceiling=pg_ceiling, xadd_ceiling=xadd_ceiling,
            ceiling_events=ceiling_events,
            counts={k: int(stats[k]) for k in ("received", "unique_processed",
                                               "duplicate_dropped", "dead_lettered",
                                               "pending")},
            exact=_exact(stats, work.unique_keys, sent.events_accepted),
            cpu_us_per_event={name: seconds * 1e6 / work.events
                              for name, seconds in meter.spent.items()},
            peak_rss_mb={**{name: probes.peak_rss_mb(process.pid)
                            for name, process in stack.processes.items()},
                         "load generator (this process)": probes.peak_rss_mb(os.getpid())},
            samples=samples,
        )


def _processes(stack: LocalStack) -> dict[str, list[int]]:
    postgres = stack.postgres.process
    redis = stack.redis.process
    assert postgres is not None and redis is not None
    consumers = [p.pid for name, p in stack.processes.items() if name.startswith("consumer")]
    ingests = [p.pid for name, p in stack.processes.items() if name.startswith("ingest")]
    return {
        "ingest (all)": ingests,
        "consumers (all)": consumers,
        "redis": [redis.pid],
        "postgres (all backends)": [postgres.pid, *probes.children(postgres.pid)],
        "load generator (this process)": [os.getpid()],
    }


def _batch_ms(stack: LocalStack) -> list[float]:
    """Every consumer batch's duration, from the `batch_settled` lines of their logs."""
    values: list[float] = []
    for log in sorted((stack.data_dir / "logs").glob("consumer-*.log")):
        with log.open() as lines:  # a line at a time: a long run's logs are large
            values.extend(float(orjson.loads(line)["ms"]) for line in lines
                          if '"batch_settled"' in line)
    return values


def _exact(stats: dict[str, Any], unique_keys: int, accepted: int) -> bool:
    return bool(stats["pending"] == 0 and stats["unique_processed"] == unique_keys
                and stats["received"] >= accepted
                and stats["received"] == stats["unique_processed"]
                + stats["duplicate_dropped"] + stats["dead_lettered"])
