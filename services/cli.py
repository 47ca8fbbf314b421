"""`logagg`: one command, a subcommand per process (SPEC §1).

Settings come from the environment (`Settings.from_env`); the few flags here override them.
Each subcommand is a module's `run(settings, args)`, with its options from `add_arguments`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared import logging as logsetup
from shared.exceptions import LogaggError
from shared.settings import Settings

Run = Callable[[Settings, argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand: its module, imported only when the subcommand runs (a consumer need not
    load aiohttp, the bench or matplotlib: it starts in half the time, in 17 MB less), and
    the names of its `run` and its `add_arguments` there."""

    name: str
    help: str
    module: str
    run: str = "run"
    add_arguments: str | None = "add_arguments"

    def load(self) -> tuple[AddArguments, Run]:
        module = importlib.import_module(self.module)
        add_arguments = getattr(module, self.add_arguments) if self.add_arguments else _nothing
        return add_arguments, getattr(module, self.run)


def _nothing(parser: argparse.ArgumentParser) -> None:
    pass


COMMANDS = [
    Command("ingest", "serve the HTTP API", "services.ingest.__main__", add_arguments=None),
    Command("consumer", "run one consumer of the group", "services.consumer.__main__",
            add_arguments=None),
    Command("migrate", "apply the sql/ migrations", "services.migrate.__main__",
            add_arguments=None),
    Command("publish", "send simulated events, duplicates included",
            "services.publisher.__main__"),
    Command("dlq", "list dead letters, or replay them", "services.dlq.__main__"),
    Command("keys", "create, list or revoke API keys", "services.keys.__main__"),
    Command("alarms", "list standing alarms (exit 1 if any), or clear one",
            "services.alarms.__main__"),
    Command("bench", "measure throughput and latency against ceilings from the same run",
            "services.bench.__main__"),
    Command("up", "run the whole stack on this machine until Ctrl-C", "services.stack.local",
            run="up", add_arguments="add_up_arguments"),
    Command("demo", "run the stack, publish 20,000 events (30%% duplicates), check the counts",
            "services.stack.local", run="demo", add_arguments="add_demo_and_up_arguments"),
]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser(argv).parse_args(argv)
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


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of the subcommand `argv` names (only its module is
    imported); every other subcommand is listed by name and help."""
    parser = argparse.ArgumentParser(
        prog="logagg", description="logagg, a distributed log aggregator. Settings come from "
        "the environment (see .env.example); --log-level overrides LOG_LEVEL.")
    parser.add_argument("--log-level", help="override LOG_LEVEL")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    chosen = _command_name(sys.argv[1:] if argv is None else argv)
    for command in COMMANDS:
        subparser = commands.add_parser(command.name, help=command.help)
        if command.name == chosen:
            add_arguments, run = command.load()
            add_arguments(subparser)
            subparser.set_defaults(run=run)
    return parser


def _command_name(argv: Sequence[str]) -> str | None:
    """The subcommand argv names: its first word that is not --log-level or its value."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


if __name__ == "__main__":
    sys.exit(main())
