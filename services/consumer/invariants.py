"""Invariants a consumer checks, and the alarms it raises when one does not hold (SPEC §4).

- **The group exists.** A lost group (FLUSHALL, data loss, a restore without it) is recreated
  just after the settled floor: everything below it was settled and acked, and what is above it
  is delivered again, which the store makes harmless. Alarm `group_lost`.
- **The broker never goes back in its history.** A broker restored from an older file, crashed
  with `appendfsync everysec`, or failed over to a replica that was behind has lost writes it
  had acknowledged. Three signs of it, each checked:
  - the *history mark*: every check writes a number into Redis, then records it in the store
    once Redis has acknowledged it; a broker whose copy is below the store's lost at least the
    writes since that mark (this sign does not depend on what was published meanwhile);
  - a settled position at or above the floor missing from the stream (housekeeping trims only
    below the floor, so a settled entry there must still be in it);
  - Redis's last generated id below the highest settled position: its ids are then moved past
    it (XSETID), so that new events never reuse a settled position.
  Alarm `broker_history_lost`. What was lost cannot be listed: the alarm says from when.
- **No first delivery below the floor.** An entry never delivered before, below the settled
  floor, means the group's history went back. (Only while the batch is younger than
  CLAIM_IDLE_MS: a consumer held up longer, by an outage or a freeze, may find its batch
  claimed, settled and passed by the floor, which is no fault.) Its key is stored if it is new
  (the store never drops an unsettled key), but a copy of a stored key cannot be told from a
  redelivery there and is not counted. Alarm `broker_history_lost`.
- **The broker does not evict.** A `maxmemory-policy` of `allkeys-*` lets Redis, at its
  `maxmemory`, delete any key: the stream with entries answered 202, the `received` count, the
  group. logagg starts Redis with `noeviction` (services/stack/servers.py, Compose); a Redis it
  did not start is asked (CONFIG GET, skipped where CONFIG is not allowed). `volatile-*`
  policies only evict keys with a time to live, which logagg gives only to rate-limit tokens.
  Alarm `broker_may_evict`, raised before any loss: it says the guarantee is not kept.
- **The balance holds.** Whenever a consistent snapshot shows nothing pending,
  received == unique_processed + duplicate_dropped + dead_lettered. Alarm `balance_drift`.

Checked at consumer start and in every housekeeping round.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared import snapshot
from shared.alarms import (
    BALANCE_DRIFT,
    BROKER_HISTORY_LOST,
    BROKER_MAY_EVICT,
    DEDUP_WINDOW_MISSED,
    GROUP_LOST,
    RETENTION_MISPLACED,
    raise_alarm,
)
from shared.entries import Entry, StreamId
from shared.store import ORIGIN, Settled, Store
from shared.stream import Stream

# How a broker goes back in its history (the README's failure table, row 18).
CAUSES = ("restored from an older file, a crash with appendfsync everysec, a failover to a "
          "replica that was behind")


async def check_eviction_policy(stream: Stream, store: Store) -> None:
    """Alarm when the broker may evict the stream at its memory limit (`allkeys-*`)."""
    policy = await stream.eviction_policy()
    if policy is not None and policy.startswith("allkeys-"):
        await raise_alarm(store, BROKER_MAY_EVICT, (
            f"the broker's maxmemory-policy is {policy}: at its maxmemory it deletes keys, "
            f"entries of stream {stream.key!r} accepted and not yet stored among them; set "
            f"maxmemory-policy noeviction (then ingest answers 503 there instead), and clear "
            f"this alarm"))


async def ensure_group(stream: Stream, store: Store) -> None:
    """Create the group unless it exists; after the settled floor if the store has settled
    anything of this stream, which means the group was there before and is lost."""
    floor = await store.floor()
    high = await store.settled_high()
    if floor == ORIGIN and high is None:
        await stream.ensure_group()
        return
    after = floor.before()
    if await stream.ensure_group(after=after):
        await raise_alarm(store, GROUP_LOST, (
            f"the consumer group {stream.group!r} of stream {stream.key!r} was gone and has "
            f"been recreated after the settled floor {floor}: entries from there on are "
            f"delivered again (counted once); any the old group had not delivered below it "
            f"are not"))


async def check_broker_history(stream: Stream, store: Store) -> None:
    await check_eviction_policy(stream, store)
    await _check_mark(stream, store)
    high = await store.settled_high()
    floor = await store.floor()
    known = max(high or ORIGIN, floor.before())
    if known == ORIGIN:
        return
    ends = await stream.log_ends()
    last = ends.last_generated if ends else ORIGIN
    if last < known:
        if ends is None:
            await ensure_group(stream, store)  # XSETID needs the stream
        await stream.generate_after(known)
        await raise_alarm(store, BROKER_HISTORY_LOST, (
            f"the broker's log of stream {stream.key!r} ends at {last}, but positions up to "
            f"{known} were settled: the broker lost entries it had accepted ({CAUSES}), and "
            f"`received` lost their count with them; new entries now get ids after {known}"))
    elif (high is not None and high >= floor and not await stream.holds(high)
          # Read again: another consumer may have raised the floor past it and trimmed it
          # since (the floor always rises before the trim).
          and high >= await store.floor()):
        await raise_alarm(store, BROKER_HISTORY_LOST, (
            f"settled position {high} is missing from the broker's stream {stream.key!r}, "
            f"though it is above the settled floor {floor}, below which alone entries are "
            f"trimmed: the broker lost part of its log (or entries were deleted by hand), and "
            f"`received` may have lost their count"))


async def _check_mark(stream: Stream, store: Store) -> None:
    # The store's first: it only ever records a mark Redis had already acknowledged, so a
    # healthy broker's copy, read after it, is never below it, whatever other consumers raise
    # meanwhile.
    recorded = await store.mark()
    broker = await stream.mark()
    if broker < recorded:
        await raise_alarm(store, BROKER_HISTORY_LOST, (
            f"the broker's history mark of stream {stream.key!r} is {broker}, but it had "
            f"acknowledged {recorded}: it went back in its history ({CAUSES}, a FLUSHALL) and "
            f"lost what it was sent since that mark was written, events accepted and their "
            f"`received` count included"))
    # Redis first: the store never records a mark the broker has not acknowledged.
    await store.raise_mark(await stream.raise_mark(max(broker, recorded) + 1))


async def check_first_deliveries(store: Store, stream: Stream, entries: Sequence[Entry],
                                 floor: StreamId) -> None:
    below = [e.id for e in entries if e.id < floor]
    if below:
        await raise_alarm(store, BROKER_HISTORY_LOST, (
            f"{len(below)} entries of stream {stream.key!r} were delivered for the first time "
            f"below the settled floor {floor} (the lowest {min(below)}): the group's history "
            f"went back; new keys among them were stored, copies of stored keys were not "
            f"counted"))


async def check_balance(stream: Stream, store: Store) -> None:
    look = await snapshot.take(stream, store, topics=0)
    if look.pending == 0 and not look.balanced:
        await raise_alarm(store, BALANCE_DRIFT, (
            f"nothing is pending on stream {stream.key!r}, yet received {look.received} != "
            f"unique_processed + duplicate_dropped + dead_lettered = {look.settled} "
            f"(off by {look.received - look.settled:+d})"))


async def check_settled(store: Store, settled: Settled) -> None:
    """What a settling transaction itself saw it could not keep (shared/store.py `Settled`)."""
    if settled.late:
        first = min(settled.late)
        await raise_alarm(store, DEDUP_WINDOW_MISSED, (
            f"{len(settled.late)} entries received before the forgotten horizon were stored "
            f"as new (the first at {first}, received {first.received_at:%Y-%m-%dT%H:%M:%SZ}): "
            f"keys their duplicates would match may have been forgotten already, after "
            f"DEDUP_WINDOW_DAYS; they may be duplicates counted as unique. Causes: a backlog "
            f"settled later than the dedup window, or the broker's clock gone back"))
    if settled.misplaced:
        await raise_alarm(store, RETENTION_MISPLACED, (
            f"{len(settled.misplaced)} events were stored with another expiry than their "
            f"retention asks (the first at {min(settled.misplaced)}): no partition of events "
            f"was made for it; housekeeping makes them ahead, so look for a consumer whose "
            f"housekeeping has not run, or retention settings that differ between consumers"))
