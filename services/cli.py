"""`logagg`: one command, a subcommand per process (SPEC §1).

Settings come from the environment (`Settings.from_env`); the few flags here override them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from shared import logging as logsetup
from shared.exceptions import LogaggError
from shared.settings import Settings

logger = logging.getLogger("logagg")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(log_level=args.log_level)
        logsetup.configure(settings.log_level, settings.log_format)
        code: int = args.run(settings, args)
        return code
    except LogaggError as error:
        print(f"logagg: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logagg", description=__doc__)
    parser.add_argument("--log-level", help="override LOG_LEVEL")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    ingest = commands.add_parser("ingest", help="serve the HTTP API")
    ingest.set_defaults(run=_ingest)

    consumer = commands.add_parser("consumer", help="run one consumer of the group")
    consumer.set_defaults(run=_consumer)

    migrate = commands.add_parser("migrate", help="apply the sql/ migrations")
    migrate.set_defaults(run=_migrate)

    from services.publisher.__main__ import add_arguments as publish_arguments
    publish = commands.add_parser("publish", help="send simulated events, duplicates included")
    publish_arguments(publish)
    publish.set_defaults(run=lambda settings, args: _publish(args))

    from services.dlq.__main__ import add_arguments as dlq_arguments
    dlq = commands.add_parser("dlq", help="list dead letters, or replay them")
    dlq_arguments(dlq)
    dlq.set_defaults(run=_dlq)

    from services.bench.__main__ import add_arguments as bench_arguments
    bench = commands.add_parser(
        "bench", help="measure throughput and latency against ceilings from the same run")
    bench_arguments(bench)
    bench.set_defaults(run=_bench)

    from services.stack.local import add_demo_arguments, add_up_arguments
    up = commands.add_parser("up", help="run the whole stack on this machine until Ctrl-C")
    add_up_arguments(up)
    up.set_defaults(run=_up)
    demo = commands.add_parser(
        "demo", help="run the stack, publish 20,000 events (30%% duplicates), check the counts")
    add_up_arguments(demo)
    add_demo_arguments(demo)
    demo.set_defaults(run=_demo)
    return parser


def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    from services.ingest.__main__ import run

    return run(settings)


def _consumer(settings: Settings, args: argparse.Namespace) -> int:
    from services.consumer.__main__ import run

    return run(settings)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from shared.migrations import migrate

    applied = migrate(settings.database_url)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from services.publisher.__main__ import run

    return run(args)


def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from services.dlq.__main__ import run

    return run(settings, args)


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from services.bench.__main__ import run

    return run(settings, args)


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from services.stack.local import up

    return up(settings, args)


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from services.stack.local import demo

    return demo(settings, args)


if __name__ == "__main__":
    sys.exit(main())
