"""`logagg keys create|list|revoke`: the API keys of this deployment (SPEC §3a).

Keys live in PostgreSQL, as digests; every ingest process holds them in memory and sees a
change within KEYS_REFRESH_MS (services/ingest/auth.py). A new key's secret is printed once,
here, and nowhere else.

`create --key-env VAR` takes the secret from the environment instead of making one, and is
idempotent: this is how Docker Compose (`.env`) and `logagg up` give their processes keys they
already know. Running it again with the same secret changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass

import orjson

from shared import keys
from shared.clients import TOOL, opened
from shared.keys import SCOPES, ApiKey
from shared.logging import printable
from shared.settings import Settings


@dataclass(frozen=True, slots=True)
class Made:
    key: ApiKey
    secret: str
    created: bool  # False: a key with this secret already existed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(required=True, metavar="ACTION")
    create = commands.add_parser("create", help="make a key and print its secret, once")
    create.add_argument("name", metavar="NAME", help="who or what uses the key")
    create.add_argument("--scopes", type=_names, default=["publish"],
                        help=f"comma-separated, of {', '.join(SCOPES)} (default: publish)")
    create.add_argument("--topics", type=_names, default=None,
                        help="topics the key may write and read, comma-separated; `name*` is a "
                             "prefix (default: every topic)")
    create.add_argument("--source", default=None,
                        help="every event published with the key must carry this source")
    create.add_argument("--rate", type=float, default=None,
                        help="events/s the key may publish, shared by every ingest process")
    create.add_argument("--burst", type=float, default=None,
                        help="events it may publish at once (default: one second of --rate)")
    create.add_argument("--key-env", metavar="VAR", default=None,
                        help="take the secret from environment variable VAR instead of making "
                             "one; nothing changes if that key exists already")
    create.add_argument("--json", action="store_true",
                        help="one JSON object: id, name, key, prefix, scopes, ...")
    create.set_defaults(keys=_create)
    listing = commands.add_parser("list", help="show every key, revoked ones included")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(keys=_list)
    revoke = commands.add_parser("revoke", help="revoke a key: ingest refuses it within a second")
    revoke.add_argument("id", type=int, metavar="ID", help="the key's id, as `keys list` shows")
    revoke.set_defaults(keys=_revoke)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one")
    return names


def run(settings: Settings, args: argparse.Namespace) -> int:
    code: int = asyncio.run(args.keys(settings, args))
    return code


async def create(settings: Settings, name: str, *, scopes: list[str],
                 topics: list[str] | None = None, source: str | None = None,
                 rate: float | None = None, burst: float | None = None,
                 secret: str | None = None) -> Made:
    """Make a key (or, given its `secret`, make sure it exists). ValueError on bad limits."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}: use {', '.join(SCOPES)}")
    if burst is not None and rate is None:
        raise ValueError("--burst needs --rate")
    if rate is not None and not rate > 0:
        raise ValueError("--rate must be more than 0 events/s")
    if rate is not None:
        burst = max(rate, 1.0) if burst is None else burst
        if burst < 1:
            raise ValueError("--burst must be at least 1 event")
    if secret is None:
        secret = keys.new_secret()
    else:
        keys.check_supplied(secret)
    async with opened(settings, TOOL, name="keys") as clients:
        key, created = await clients.store.create_key(
            secret, name=name, scopes=scopes, topics=topics, source=source, rate=rate,
            burst=burst)
    if key.revoked_at is not None:
        raise ValueError(f"that secret belongs to key {key.id}, revoked: choose another")
    return Made(key, secret, created)


async def _create(settings: Settings, args: argparse.Namespace) -> int:
    secret = None
    if args.key_env is not None:
        secret = os.environ.get(args.key_env, "")
        if not secret:
            print(f"logagg keys create: {args.key_env} is not set", file=sys.stderr)
            return 2
    try:
        made = await create(settings, args.name, scopes=args.scopes, topics=args.topics,
                            source=args.source, rate=args.rate, burst=args.burst, secret=secret)
    except ValueError as error:
        print(f"logagg keys create: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(_dumps({**made.key.as_json(), "key": made.secret, "created": made.created}))
    elif made.created:
        print(f"created key {made.key.id} {printable(made.key.name)!r}: "
              f"{_describe(made.key)}")
        if args.key_env is None:
            print(f"key: {made.secret}")
            print("It is shown this once: only its digest is stored.")
    else:
        print(f"key {made.key.id} {printable(made.key.name)!r} already exists: "
              f"{_describe(made.key)}")
    return 0


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    async with opened(settings, TOOL, name="keys") as clients:
        every = await clients.store.keys()
    for key in every:
        if args.json:
            print(_dumps(key.as_json()))
        else:
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M:%SZ}" if key.revoked_at else "live"
            print(f"{key.id:>4}  {key.prefix}…  {printable(key.name)!r}  {_describe(key)}  "
                  f"{state}")
    if not args.json:
        print(f"{len(every)} key(s)")
    return 0


async def _revoke(settings: Settings, args: argparse.Namespace) -> int:
    async with opened(settings, TOOL, name="keys") as clients:
        revoked = await clients.store.revoke_key(args.id)
    if not revoked:
        print(f"logagg keys revoke: no live key has id {args.id}", file=sys.stderr)
        return 1
    print(f"revoked key {args.id}")
    return 0


def _describe(key: ApiKey) -> str:
    parts = [f"scopes={','.join(key.scopes)}"]
    if key.topics is not None:
        parts.append(f"topics={printable(','.join(key.topics))}")
    if key.source is not None:
        parts.append(f"source={printable(key.source)}")
    if key.rate is not None:
        parts.append(f"rate={key.rate:g}/s burst={key.burst:g}")
    return " ".join(parts)


def _dumps(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()
