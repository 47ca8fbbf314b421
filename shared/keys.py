"""API keys (SPEC §3a): what a key is, what it may do, and how a secret becomes a digest.

A key is a long random secret, shown once when it is made. Only its SHA-256 digest is stored:
ingest hashes the key a request presents and looks the digest up, so a copy of the database
gives no usable key. A digest of 256 random bits needs no salt or slow hash (those protect
guessable passwords); a short public prefix (`lgk_` and 8 characters) tells keys apart in
`logagg keys list` and in logs, and is useless on its own.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

PUBLISH, READ, ADMIN = "publish", "read", "admin"
SCOPES = (PUBLISH, READ, ADMIN)
KEY_PREFIX = "lgk_"
PUBLIC_CHARS = len(KEY_PREFIX) + 8  # what `keys list` shows of a key
# A key supplied from outside (`keys create --key-env`): long enough to be unguessable, and of
# the characters a Bearer credential may hold (RFC 6750's b64token), so it survives a header.
SUPPLIED = re.compile(r"[A-Za-z0-9._~+/-]{32,256}=*")
MIN_SUPPLIED = 32
MAX_PROBLEMS = 100  # events a 403 names, like the 422's details


def new_secret() -> str:
    """A fresh key: `lgk_` and 256 random bits in URL-safe base64 (47 characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def could_be_a_key(text: str) -> bool:
    return SUPPLIED.fullmatch(text) is not None


def check_supplied(key: str) -> None:
    """A key someone chose (from the environment or `.env`): ValueError unless it could be one
    we made."""
    if not could_be_a_key(key):
        raise ValueError(f"a key must be {MIN_SUPPLIED} to 256 characters of letters, digits "
                         "and ._~+/- (try: logagg keys create NAME, or openssl rand -hex 32)")


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    prefix: str
    digest: bytes
    scopes: tuple[str, ...]
    topics: tuple[str, ...] | None  # None: every topic; `name*` is a prefix
    source: str | None  # None: any source
    rate: float | None  # events/s, with `burst`; None: no limit
    burst: float | None
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @classmethod
    def of_row(cls, row: Sequence[Any]) -> ApiKey:
        (id_, name, prefix, key_digest, scopes, topics, source, rate, burst, created_at,
         revoked_at) = row
        return cls(id_, name, prefix, bytes(key_digest), tuple(scopes),
                   None if topics is None else tuple(topics), source, rate, burst, created_at,
                   revoked_at)

    def may(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes

    def may_use_topic(self, topic: str) -> bool:
        if self.topics is None:
            return True
        return any(topic.startswith(allowed[:-1]) if allowed.endswith("*") else
                   topic == allowed for allowed in self.topics)

    def refusals(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Why this key may not publish each event outside its limits (topics, bound source):
        `{"index", "path", "message"}` for the first MAX_PROBLEMS, empty when all are fine.
        The events are valid: topic and source are strings."""
        if self.topics is None and self.source is None:
            return []
        found: list[dict[str, Any]] = []
        for index, event in enumerate(events):
            if not self.may_use_topic(event["topic"]):
                found.append({"index": index, "path": "/topic",
                              "message": f"this key may not publish to topic "
                                         f"{event['topic']!r}"})
            if self.source is not None and event["source"] != self.source:
                found.append({"index": index, "path": "/source",
                              "message": f"this key is bound to source {self.source!r}"})
            if len(found) >= MAX_PROBLEMS:
                break
        return found[:MAX_PROBLEMS]

    def as_json(self) -> dict[str, Any]:
        """What `keys list --json` shows: everything but the digest."""
        return {"id": self.id, "name": self.name, "prefix": self.prefix,
                "scopes": list(self.scopes),
                "topics": None if self.topics is None else list(self.topics),
                "source": self.source, "rate": self.rate, "burst": self.burst,
                "created_at": self.created_at, "revoked_at": self.revoked_at}
