"""`logagg`: one command, a subcommand per process (SPEC §1).

Settings come from the environment (`Settings.from_env`); the few flags here override them.
Each subcommand is a module's `run(settings, args)`, with its options from `add_arguments`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from services.alarms import __main__ as alarms
from services.bench import __main__ as bench
from services.consumer import __main__ as consumer
from services.dlq import __main__ as dlq
from services.ingest import __main__ as ingest
from services.keys import __main__ as keys
from services.migrate import __main__ as migrate
from services.publisher import __main__ as publisher
from services.stack import local
from shared import logging as logsetup
from shared.exceptions import LogaggError
from shared.settings import Settings

Run = Callable[[Settings, argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    local.add_up_arguments(parser)
    local.add_demo_arguments(parser)


COMMANDS: list[tuple[str, str, AddArguments, Run]] = [
    ("ingest", "serve the HTTP API", _no_arguments, ingest.run),
    ("consumer", "run one consumer of the group", _no_arguments, consumer.run),
    ("migrate", "apply the sql/ migrations", _no_arguments, migrate.run),
    ("publish", "send simulated events, duplicates included", publisher.add_arguments,
     publisher.run),
    ("dlq", "list dead letters, or replay them", dlq.add_arguments, dlq.run),
    ("keys", "create, list or revoke API keys", keys.add_arguments, keys.run),
    ("alarms", "list standing alarms (exit 1 if any), or clear one", alarms.add_arguments,
     alarms.run),
    ("bench", "measure throughput and latency against ceilings from the same run",
     bench.add_arguments, bench.run),
    ("up", "run the whole stack on this machine until Ctrl-C", local.add_up_arguments,
     local.up),
    ("demo", "run the stack, publish 20,000 events (30%% duplicates), check the counts",
     _demo_arguments, local.demo),
]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    parser = argparse.ArgumentParser(
        prog="logagg", description="logagg, a distributed log aggregator. Settings come from "
        "the environment (see .env.example); --log-level overrides LOG_LEVEL.")
    parser.add_argument("--log-level", help="override LOG_LEVEL")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for name, help_text, add_arguments, run in COMMANDS:
        command = commands.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


if __name__ == "__main__":
    sys.exit(main())
