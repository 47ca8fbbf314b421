"""`logagg dlq list` and `logagg dlq replay`: look at dead letters, and send them through again.

A replayed letter goes back into the stream as a new entry that names the letter it revives.
The consumer that settles it takes the letter back from the dead in the same transaction (so
`dead_lettered` goes down as `unique_processed` or `duplicate_dropped` goes up), once: replaying
a letter twice, or a redelivery of the replay, changes nothing the second time.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from shared.clients import TOOL, opened
from shared.entries import StreamId
from shared.logging import printable
from shared.settings import Settings
from shared.store import DeadLetter, Store

PAGE = 500
# Letters of events the store could not settle; the others (`deleted`, `undecodable`) hold
# no event ingest accepted.
REPLAYABLE = ("store_rejected", "store_failed")


@dataclass
class Replayed:
    replayed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="show dead letters, oldest first")
    listing.add_argument("--status", choices=["dead", "replayed", "all"], default="dead")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(dlq=_list)
    replay = commands.add_parser("replay", help="send dead letters through the pipeline again")
    replay.add_argument("ids", nargs="*", metavar="ID", help="letter ids, as `dlq list` shows")
    replay.add_argument("--all", action="store_true", help="every letter still dead")
    replay.set_defaults(dlq=_replay)


def run(settings: Settings, args: argparse.Namespace) -> int:
    code: int = asyncio.run(args.dlq(settings, args))
    return code


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    status = None if args.status == "all" else args.status
    async with opened(settings, TOOL, name="dlq") as clients:
        letters = await clients.store.dead_letters(status=status, limit=args.limit)
    for letter in letters:
        print(orjson.dumps(letter.as_json(), option=orjson.OPT_UTC_Z).decode() if args.json
              else _line(letter))
    if not args.json:
        print(f"{len(letters)} dead letter(s)" + (" (limit reached)" if len(letters) ==
                                                  args.limit else ""))
    return 0


def _line(letter: DeadLetter) -> str:
    error = letter.last_error.splitlines()[0][:80] if letter.last_error else ""
    # Topic, event id and error text come from clients: escaped, so that no escape sequence
    # reaches the terminal and no letter spans two lines.
    return (f"{letter.position}  {letter.status:<8} {letter.reason:<14} "
            f"deliveries={letter.deliveries}  {printable(str(letter.topic))}/"
            f"{printable(str(letter.event_id))}  {printable(error)}")


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all):
        print("logagg dlq replay: name letter ids, or --all")
        return 2
    try:
        positions = [StreamId.parse(text) for text in args.ids]
    except ValueError as error:
        print(f"logagg dlq replay: {error}")
        return 2
    result = await replay(settings, None if args.all else positions)
    print(f"replayed {len(result.replayed)}")
    for letter_id, why in result.skipped.items():
        print(f"skipped {letter_id}: {why}")
    return 0 if not result.skipped else 1


async def replay(settings: Settings, positions: Sequence[StreamId] | None) -> Replayed:
    """Re-enqueue the named letters (None: every letter still dead)."""
    result = Replayed()
    async with opened(settings, TOOL, name="dlq") as clients:
        stream, store = clients.stream, clients.store
        if positions is None:
            letters = await _all_dead(store)
        else:
            letters = await store.dead_letters_at(positions)
            found = {letter.position for letter in letters}
            result.skipped.update({str(p): "no such dead letter" for p in positions
                                   if p not in found})
        ready = []
        for letter in letters:
            why = _not_replayable(letter)
            if why:
                result.skipped[str(letter.position)] = why
            else:
                ready.append((str(letter.position), letter.event or b""))
        for start in range(0, len(ready), PAGE):
            await stream.replay(ready[start:start + PAGE])
        result.replayed = [letter_id for letter_id, _ in ready]
    return result


async def _all_dead(store: Store) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    while True:
        after = letters[-1].position if letters else None
        page = await store.dead_letters(after=after, status="dead", limit=PAGE)
        letters += page
        if len(page) < PAGE:
            return letters


def _not_replayable(letter: DeadLetter) -> str | None:
    if letter.status != "dead":
        return f"already {letter.status}"
    if letter.event is None or letter.reason not in REPLAYABLE:
        return f"{letter.reason}: the letter holds no event to send again"
    return None
