"""`/stats` with many topics: the busiest N, a count of them all, exact totals, a bounded answer;
and the fold of the counter shards that keeps it so (sql/0007_counter_totals.sql)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp.test_utils import TestClient

from services.consumer.housekeeping import FOLD_PARTS, Housekeeping
from shared.entries import Entry, StreamId
from shared.settings import Settings
from shared.store import FOLD_ROWS, Store, TopicCounts
from shared.stream import Stream

Client = TestClient[Any, Any]
TOPICS = 5_000
SHARDS = 4
Row = tuple[str, int, int, int, int]  # topic, shard, unique, duplicate, dead


def entry(position: int, key: str, topic: str) -> Entry:
    return Entry(b"", StreamId(position, 0), topic, key, "2026-11-25T10:00:00Z", "s", b"{}")


def counter_rows(topics: int = TOPICS, seed: int = 11) -> list[Row]:
    """Shard rows of `topics` topics of uneven volumes (ties among them), and of the topic ''
    (dead letters whose topic could not be read), as settling transactions leave them."""
    rng = random.Random(seed)
    rows = [(f"t-{n:05d}", shard, rng.randrange(50), rng.randrange(20), rng.randrange(2))
            for n in range(topics) for shard in range(SHARDS) if not shard or rng.random() < 0.7]
    return [*rows, ("", 0, 0, 0, 9)]


def expected(rows: list[Row]) -> tuple[TopicCounts, list[tuple[str, TopicCounts]]]:
    """The totals, and every topic but '' busiest first (unique + duplicate, then name)."""
    sums: dict[str, list[int]] = {}
    for topic, _, *counts in rows:
        sums.setdefault(topic, [0, 0, 0])
        sums[topic] = [a + b for a, b in zip(sums[topic], counts, strict=True)]
    totals = TopicCounts(*(sum(c[i] for c in sums.values()) for i in range(3)))
    ranked = sorted(((t, TopicCounts(*c)) for t, c in sums.items() if t),
                    key=lambda item: (-(item[1].unique_processed + item[1].duplicate_dropped),
                                      item[0]))
    return totals, ranked


async def fill(store: Store, sql: psycopg.Connection[Any], rows: list[Row]) -> None:
    stream = await store.stream_id()
    with sql.cursor().copy("COPY topic_stats (stream, topic, shard, unique_processed, "
                           "duplicate_dropped, dead_lettered) FROM STDIN") as copy:
        for row in rows:
            copy.write_row((stream, *row))


async def fold_everything(store: Store) -> int:
    folded = 0
    while (moved := await store.fold_counters()) == FOLD_ROWS:
        folded += moved
    return folded + (moved or 0)


async def get_stats(client: Client, query: str = "") -> tuple[dict[str, Any], int]:
    answer = await client.get(f"/stats{query}")
    assert answer.status == 200
    raw = await answer.read()
    return orjson.loads(raw), len(raw)


def listed(stats: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(topic, t["unique_processed"], t["duplicate_dropped"])
            for topic, t in stats["topics"].items()]


def shown(ranked: list[tuple[str, TopicCounts]]) -> list[tuple[str, int, int]]:
    return [(topic, c.unique_processed, c.duplicate_dropped) for topic, c in ranked]


@pytest.mark.parametrize("folded", ["nothing", "part", "everything"])
async def test_stats_lists_the_busiest_topics_counts_them_all_and_keeps_the_totals_exact(
        client: Client, store: Store, sql: psycopg.Connection[Any], folded: str) -> None:
    rows = counter_rows()
    await fill(store, sql, rows)
    if folded == "part":  # some topics folded, some not, some both (shard rows since)
        assert await store.fold_counters(rows=len(rows) // 2) == len(rows) // 2
        await fill(store, sql, [(topic, 9, 3, 1, 0) for topic, *_ in rows[::7] if topic])
        rows += [(topic, 9, 3, 1, 0) for topic, *_ in rows[::7] if topic]
    elif folded == "everything":
        assert await fold_everything(store) == len(rows)
    totals, ranked = expected(rows)

    stats, size = await get_stats(client)
    assert listed(stats) == shown(ranked[:100])
    assert stats["topics_total"] == len(ranked) == TOPICS
    assert (stats["unique_processed"], stats["duplicate_dropped"], stats["dead_lettered"]) == (
        totals.unique_processed, totals.duplicate_dropped, totals.dead_lettered)
    assert size < 8_000  # 100 topics; every topic was 330 KB here

    many, _ = await get_stats(client, "?topics=1000")
    assert listed(many) == shown(ranked[:1000])
    none, size = await get_stats(client, "?topics=0")
    assert (none["topics"], none["topics_total"]) == ({}, TOPICS)
    assert size < 300
    everything = await store.stats()
    assert list(everything.topics.items()) == ranked
    assert everything.totals == totals


async def test_stats_shows_a_topic_with_counts_both_folded_and_not_at_its_sum(
        client: Client, store: Store, sql: psycopg.Connection[Any]) -> None:
    """The folded top N comes from an index; a topic below it there may climb above it with its
    shard rows since, and must be listed where its sum puts it."""
    rows: list[Row] = [(f"t-{n:03d}", 0, 300 - n, 0, 0) for n in range(300)]
    await fill(store, sql, rows)
    await fold_everything(store)
    climbing = [("t-299", 1, 1000, 5, 0), ("t-150", 2, 60, 0, 0), ("new", 3, 1, 0, 0)]
    await fill(store, sql, climbing)
    _, ranked = expected(rows + climbing)
    stats, _ = await get_stats(client, "?topics=3")
    assert listed(stats) == shown(ranked[:3])
    assert listed(stats)[0] == ("t-299", 1001, 5)
    assert stats["topics_total"] == 301


@pytest.mark.parametrize("query", ["?topics=1001", "?topics=-1", "?topics=ten", "?topics=",
                                   "?topics=1&topics=2", "?top=5", "?topics=²"])
async def test_stats_refuses_a_bad_parameter_with_400(client: Client, query: str) -> None:
    answer = await client.get(f"/stats{query}")
    body = await answer.json()
    assert answer.status == 400
    assert body["error"] == "invalid_parameter"
    assert body["details"][0]["parameter"] in {"topics", "top"}


async def test_a_fold_moves_counts_without_changing_any_sum_while_consumers_settle(
        store: Store, sql: psycopg.Connection[Any]) -> None:
    """Settling transactions and folds run at once; every count ends in exactly one place."""
    rng = random.Random(5)
    batches = [[entry(b * 100 + i, f"k{rng.randrange(400)}", topic=f"t{rng.randrange(40)}")
                for i in range(30)] for b in range(40)]

    async def settle_all() -> None:
        for batch in batches:
            await store.settle(batch)

    async def fold_all(stop: asyncio.Event) -> int:
        folded = 0
        while not stop.is_set():
            folded += await store.fold_counters(rows=7) or 0
            await asyncio.sleep(0)
        return folded

    stop = asyncio.Event()
    folding = asyncio.create_task(fold_all(stop))
    await asyncio.gather(settle_all(), settle_all())  # the second pass: all redeliveries
    stop.set()
    assert await folding > 0
    keys = {(e.topic, e.event_id) for batch in batches for e in batch}
    entries = sum(len(batch) for batch in batches)
    stats = await store.stats()
    assert (stats.total("unique_processed"), stats.total("duplicate_dropped")) == (
        len(keys), entries - len(keys))
    per_topic = dict(sql.execute("SELECT topic, sum(unique_processed + duplicate_dropped) "
                                 "FROM topic_counts GROUP BY topic").fetchall())
    assert {t: c.unique_processed + c.duplicate_dropped for t, c in stats.topics.items()} == \
        per_topic
    await fold_everything(store)
    assert sql.execute("SELECT count(*) FROM topic_stats").fetchone() == (0,)
    assert await store.stats() == stats


async def test_a_fold_skips_the_rows_a_settling_transaction_holds_instead_of_waiting(
        store: Store, sql: psycopg.Connection[Any], database_url: str) -> None:
    await fill(store, sql, [("a", 0, 1, 0, 0), ("b", 0, 2, 0, 0), ("c", 0, 3, 0, 0)])
    async with await psycopg.AsyncConnection.connect(database_url) as holder:
        await holder.execute("SELECT 1 FROM topic_stats WHERE topic = 'b' FOR UPDATE")
        assert await asyncio.wait_for(store.fold_counters(), timeout=5) == 2
        await holder.rollback()
    assert sql.execute("SELECT topic FROM topic_stats").fetchall() == [("b",)]
    assert await store.fold_counters() == 1
    assert (await store.stats()).topics == {
        "c": TopicCounts(3, 0, 0), "b": TopicCounts(2, 0, 0), "a": TopicCounts(1, 0, 0)}


async def test_housekeeping_folds_a_bounded_part_of_the_counters_each_round(
        settings: Settings, stream: Stream, store: Store, sql: psycopg.Connection[Any]) -> None:
    rows = [(f"t-{n:06d}", 0, 1, 0, 0) for n in range(FOLD_ROWS * FOLD_PARTS + 10)]
    await fill(store, sql, rows)
    housekeeping = Housekeeping(stream, store, settings)
    assert await housekeeping.fold_counters() == FOLD_ROWS * FOLD_PARTS
    assert await housekeeping.fold_counters() == 10
    stats = await store.stats(0)
    assert (stats.total("unique_processed"), stats.topics_total) == (len(rows), len(rows))


async def test_stats_counts_only_the_topics_of_its_own_stream(
        client: Client, store: Store) -> None:
    other = Store(store.pool, "another-stream")
    await other.settle([entry(1, "k", "elsewhere")])
    await fold_everything(other)
    await other.settle([entry(2, "l", "elsewhere-too")])
    await store.settle([entry(1, "k", "here")])
    stats, _ = await get_stats(client)
    assert (stats["topics"], stats["topics_total"], stats["unique_processed"]) == (
        {"here": {"unique_processed": 1, "duplicate_dropped": 0}}, 1, 1)
