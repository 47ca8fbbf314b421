"""The live dashboard at `/`, loaded in a real headless Chromium while events flow, with keys on
(AUTH=on, the default): the page asks for a key in its own form, keeps it in the browser and
sends it with every request."""

from __future__ import annotations

import asyncio
import os
from itertools import islice
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis import Redis

from services.keys import __main__ as keys
from services.publisher.simulator import DEFAULT_TOPICS, workload
from services.stack.local import LocalStack
from shared.constants import received_key
from tests.acceptance.browser import Browser
from tests.helpers import eventually

CARDS = ("received", "unique", "duplicates", "pending", "dead", "verdict")
# Every card, and the topics table as [topic, unique, duplicates] rows, read in one evaluation:
# the page renders a poll all at once, so one read never mixes two polls.
SNAPSHOT = f"""JSON.stringify({{
  cards: Object.fromEntries({list(CARDS)!r}.map(
    (id) => [id, document.getElementById(id).textContent])),
  topics: [...document.querySelectorAll('#topics tr')].map(
    (tr) => [...tr.children].slice(0, 3).map((td) => td.textContent)),
}})"""
STORED = "localStorage.getItem('logagg.apiKey')"
WRONG_KEY = "lgk_" + "0" * 43


def number(text: str) -> int:
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else -1


async def snapshot(browser: Browser) -> dict[str, Any]:
    shown: dict[str, Any] = orjson.loads(await browser.evaluate(SNAPSHOT))
    return shown


async def stats(stack: LocalStack, key: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{stack.base_url}/stats", headers={"Authorization": f"Bearer {key}"}) as answer:
        return answer.status, await answer.json()


async def drained(stack: LocalStack, key: str) -> dict[str, Any]:
    """/stats once nothing is pending."""
    last: dict[str, Any] = {}

    async def settled() -> bool:
        nonlocal last
        status, last = await stats(stack, key)
        return status == 200 and last["pending"] == 0

    await eventually(settled, within=60, what="nothing pending")
    return last


async def publish(stack: LocalStack, key: str, events: int, rate: float) -> int:
    """Events of the simulator's workload (30 % duplicates, its five topics) in batches of 100,
    at about `rate` events/s; the number accepted."""
    work = workload(events, 0.3, list(DEFAULT_TOPICS), seed=3)
    accepted = 0
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    stream = work.encoded()
    async with aiohttp.ClientSession(headers=headers) as session:
        while batch := list(islice(stream, 100)):
            async with session.post(f"{stack.base_url}/publish",
                                    data=b"[" + b",".join(batch) + b"]") as answer:
                assert answer.status == 202, await answer.text()
                accepted += (await answer.json())["accepted"]
            await asyncio.sleep(len(batch) / rate)
    return accepted


async def enter_key(browser: Browser, key: str) -> None:
    """Type the key into the page's form and press its button, as a user does."""
    await browser.type_into("#key-input", key)
    await browser.click("#key-submit")


async def key_refused(browser: Browser, *words: str) -> bool:
    message = await browser.text("key-message")
    shown = await browser.evaluate("!document.getElementById('key-box').hidden")
    return bool(shown and all(word in message for word in words))


async def test_the_dashboard_asks_for_a_key_then_shows_the_counts_change_while_events_flow(
        stack: LocalStack, tmp_path: Path) -> None:
    reader = (await keys.create(stack.settings, "dashboard", scopes=["read"])).secret
    publisher = (await keys.create(stack.settings, "publisher", scopes=["publish"])).secret

    async def ingest_holds_the_keys() -> bool:  # within KEYS_REFRESH_MS of their creation
        return (await stats(stack, reader))[0] == 200

    await eventually(ingest_holds_the_keys, within=10, what="the new keys seen by ingest")
    async with Browser() as browser:
        await browser.call("Network.enable")
        await browser.open(f"{stack.base_url}/")

        # No key yet: the API answers 401 and the page asks for one in its form.
        await eventually(lambda: key_refused(browser, "asks for a key", "401 unauthorized"),
                         within=10, what="the form asking for a key")
        await enter_key(browser, WRONG_KEY)
        await eventually(lambda: key_refused(browser, "refused the key lgk_00000000…",
                                             "401 unauthorized"),
                         within=10, what="the wrong key refused (401)")
        assert await browser.evaluate(STORED) is None  # a refused key is not kept
        await enter_key(browser, publisher)
        await eventually(lambda: key_refused(browser, "read the counters", "403 forbidden"),
                         within=10, what="a key without the read scope refused (403)")
        await enter_key(browser, reader)

        async def shows(element: str, predicate: object) -> bool:
            return bool(predicate(number(await browser.text(element))))  # type: ignore[operator]

        await eventually(lambda: shows("received", lambda n: n == 0), what="first poll shown")
        assert await browser.evaluate(STORED) == reader
        assert await browser.evaluate("document.getElementById('key-box').hidden") is True
        assert await browser.text("key-prefix") == reader[:12] + "…"
        sent = [request["request"]["headers"].get("Authorization")
                for request in await browser.seen("Network.requestWillBeSent")
                if request["request"]["url"] == f"{stack.base_url}/stats"]
        assert sent[-1] == f"Bearer {reader}"
        assert f"Bearer {WRONG_KEY}" in sent and None in sent  # what the refusals answered

        sender = asyncio.create_task(publish(stack, publisher, 6000, rate=1500))
        try:
            await eventually(lambda: shows("received", lambda n: 0 < n < 6000),
                             what="received counting up mid-run")
            mid_run = number(await browser.text("received"))
            await eventually(lambda: shows("received", lambda n: n > mid_run),
                             what="received still growing")
        finally:
            accepted = await sender
        assert accepted == 6000
        final = await drained(stack, reader)

        async def final_poll_shown() -> bool:
            cards = (await snapshot(browser))["cards"]
            return bool(cards["pending"] == "0" and number(cards["received"]) == 6000)

        await eventually(final_poll_shown, within=10, what="a poll after the drain shown")
        shown = await snapshot(browser)
        assert {card: number(text) if card != "verdict" else text
                for card, text in shown["cards"].items()} == {
            "received": 6000, "unique": 4200, "duplicates": 1800, "pending": 0, "dead": 0,
            "verdict": "exact"}
        assert [[topic, number(unique), number(duplicates)]
                for topic, unique, duplicates in shown["topics"]] == [
            [topic, t["unique_processed"], t["duplicate_dropped"]]
            for topic, t in sorted(final["topics"].items())]
        assert len(shown["topics"]) == 5
        assert await browser.text("topics-count") == ""  # every topic listed
        assert await browser.evaluate("document.getElementById('alarms-box').hidden") is True
        png = await browser.screenshot()

        # A balance broken behind the system's back (one more `received` than was ever sent):
        # a consumer's reconciler raises balance_drift, and the page shows it.
        with Redis.from_url(stack.settings.redis_url) as redis:
            redis.incrby(received_key(stack.settings.stream_key), 1)

        async def alarm_shown() -> bool:
            return "balance_drift" in await browser.text("alarms")

        await eventually(alarm_shown, within=30, what="the balance_drift alarm shown")
        assert await browser.evaluate("document.getElementById('alarms-box').hidden") is False

        # With many topics /stats lists only the busiest, and counts them all.
        many = {**final, "topics_total": 250}
        # One evaluation: the next poll renders the real answer again.
        count = await browser.evaluate(f"render({orjson.dumps(many).decode()}), "
                                       "document.getElementById('topics-count').textContent")
        assert count == "5 of 250 topics (the busiest)"

        # Forgotten, the key leaves the browser, and the page asks for one again.
        await browser.click("#key-forget")
        await eventually(lambda: key_refused(browser, "asks for a key"), within=10,
                         what="the form back after forgetting the key")
        assert await browser.evaluate(STORED) is None
    assert png.startswith(b"\x89PNG")
    # LOGAGG_SCREENSHOT=docs/dashboard.png refreshes the README's picture.
    await asyncio.to_thread(
        Path(os.environ.get("LOGAGG_SCREENSHOT", tmp_path / "dashboard.png")).write_bytes, png)
