"""`logagg`'s command line (services/cli.py): each subcommand imports only its own module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.cli import COMMANDS, _command_name, _parser
from shared.paths import ROOT


@pytest.mark.parametrize(("argv", "name"), [
    (["consumer"], "consumer"),
    (["--log-level", "DEBUG", "bench", "--events", "10"], "bench"),
    (["--log-level=DEBUG", "demo"], "demo"),
    (["--help"], None),
    ([], None),
])
def test_the_subcommand_is_the_first_word_that_is_not_a_global_option(
        argv: list[str], name: str | None) -> None:
    assert _command_name(argv) == name


def test_a_consumer_starts_without_loading_what_other_subcommands_need() -> None:
    """Run in a process of its own: this one has imported everything already."""
    probe = ("import sys; from services.cli import _parser; "
             "_parser(['consumer']).parse_args(['consumer']); "
             "print(' '.join(m for m in ('aiohttp', 'matplotlib', 'services.bench.__main__', "
             "'services.publisher.__main__', 'services.consumer.__main__') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    assert loaded == ["services.consumer.__main__"]


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_subcommand_loads_and_parses_its_defaults(command: str) -> None:
    argv = [command, "list"] if command in ("keys", "dlq") else [command]  # an action needed
    args = _parser(argv).parse_args(argv)
    assert callable(args.run)
