"""`logagg publish`: send a simulated workload of log events to the ingest and report the outcome.

The report goes to stdout (a table, or one JSON object with --json), logs to stderr. The exit code
is 0 only when the ingest accepted every event, so a script can chain on it. Requests carry
`Authorization: Bearer <API_KEY>` (`--key` overrides it); a 401 or 403 stops the run at once,
exit code 1, saying why on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys

import orjson

from services.publisher import simulator
from services.publisher.sender import batches, send
from services.publisher.simulator import workload
from shared.settings import Settings

DEFAULT_TOPICS = ",".join(simulator.DEFAULT_TOPICS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://localhost:8080",
                        help="the ingest's base URL (default: %(default)s)")
    parser.add_argument("--events", type=_positive_int, default=20000, metavar="N",
                        help="events to send, duplicates included (default: %(default)s)")
    parser.add_argument("--duplicates", type=_share, default=0.3, metavar="F",
                        help="share of events that re-send an earlier one (default: %(default)s)")
    parser.add_argument("--batch", type=_positive_int, default=100, metavar="N",
                        help="events per request (default: %(default)s)")
    parser.add_argument("--concurrency", type=_positive_int, default=8, metavar="N",
                        help="requests in flight (default: %(default)s)")
    parser.add_argument("--topics", type=_topics, default=DEFAULT_TOPICS, metavar="a,b,c",
                        help=f"topics to spread the events over (default: {DEFAULT_TOPICS})")
    parser.add_argument("--rate", type=_positive_float, default=None, metavar="EVENTS_PER_S",
                        help="cap on events sent per second (default: no cap)")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="seed of the workload; the same seed sends the same bytes "
                             "(default: random)")
    parser.add_argument("--max-retries", type=int, default=8, metavar="N",
                        help="retries of a batch answered 5xx or 429 or cut off, with backoff "
                             "(default: %(default)s)")
    parser.add_argument("--key", default=None, metavar="KEY",
                        help="the API key to send (default: API_KEY from the environment, "
                             "which other users of this machine cannot read in `ps` as they "
                             "can a flag)")
    parser.add_argument("--json", action="store_true",
                        help="print the report as one JSON object instead of a table")
    parser.add_argument("--dry-run", action="store_true",
                        help="make the workload and cut it into request bodies as a run would, "
                             "send nothing, and print its counts and the SHA-256 of the bodies "
                             "(the same seed and arguments give the same digest)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        events = workload(args.events, args.duplicates, args.topics, args.seed)
        if args.dry_run:
            return _dry_run(events, args)
        report = asyncio.run(send(events, url=args.url, batch=args.batch,
                                  concurrency=args.concurrency, rate=args.rate,
                                  max_retries=args.max_retries,
                                  key=args.key or settings.api_key))
    except ValueError as error:
        print(f"logagg publish: {error}", file=sys.stderr)
        return 2
    print(orjson.dumps(report.to_dict()).decode() if args.json else report.summary())
    if report.stopped:
        print(f"logagg publish: stopped: {report.stopped}", file=sys.stderr)
    return 0 if report.all_accepted else 1


def _dry_run(events: simulator.Workload, args: argparse.Namespace) -> int:
    """What a run would send, without sending it: counts, bytes and their digest."""
    digest, requests, size = hashlib.sha256(), 0, 0
    for body, _ in batches(events.encoded(), args.batch):
        digest.update(body)
        requests += 1
        size += len(body)
    figures = {"events": events.events, "unique_keys": events.unique_keys,
               "duplicates": events.duplicates, "seed": events.seed, "requests": requests,
               "bytes": size, "sha256": digest.hexdigest()}
    if args.json:
        print(orjson.dumps(figures).decode())
    else:
        width = max(len(name) for name in figures)
        print("\n".join(f"{name.replace('_', ' '):<{width}}  {value}"
                        for name, value in figures.items()))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {text}")
    return value


def _topics(text: str) -> list[str]:
    topics = [topic.strip() for topic in text.split(",") if topic.strip()]
    if not topics:
        raise argparse.ArgumentTypeError("needs at least one topic")
    return topics

