"""`logagg alarms` and `logagg alarms clear KIND`: the invariants this deployment could not keep
(shared/alarms.py), and clearing one once an operator has dealt with it.

Exit status of `logagg alarms`: 0 when none stands, 1 when any does, so that a script or a
health check can act on it.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson

from shared.alarms import KINDS
from shared.clients import TOOL, opened
from shared.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(alarms=_list)
    commands = parser.add_subparsers(metavar="ACTION")
    clear = commands.add_parser("clear", help="clear a standing alarm")
    clear.add_argument("kind", choices=KINDS, metavar="KIND", help=", ".join(KINDS))
    clear.set_defaults(alarms=_clear)


def run(settings: Settings, args: argparse.Namespace) -> int:
    code: int = asyncio.run(args.alarms(settings, args))
    return code


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    async with opened(settings, TOOL, name="alarms") as clients:
        alarms = await clients.store.alarms()
    for alarm in alarms:
        if args.json:
            print(orjson.dumps({**alarm.as_json(), "last_seen": alarm.last_seen},
                               option=orjson.OPT_UTC_Z).decode())
        else:
            print(f"{alarm.kind}  since {alarm.since:%Y-%m-%dT%H:%M:%SZ}  "
                  f"(last seen {alarm.last_seen:%H:%M:%SZ})\n  {alarm.message}")
    if not args.json:
        print(f"{len(alarms)} alarm(s) on stream {settings.stream_key!r}")
    return 1 if alarms else 0


async def _clear(settings: Settings, args: argparse.Namespace) -> int:
    async with opened(settings, TOOL, name="alarms") as clients:
        cleared = await clients.store.clear_alarm(args.kind)
    print(f"{args.kind}: {'cleared' if cleared else 'was not standing'}")
    return 0
