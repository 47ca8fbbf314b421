"""The live dashboard at `/`, loaded in a real headless Chromium while events flow."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
from redis import Redis

from services.stack.local import LocalStack
from shared.constants import received_key
from tests.acceptance.browser import Browser
from tests.acceptance.helpers import start_publish
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


def number(text: str) -> int:
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else -1


async def snapshot(browser: Browser) -> dict[str, Any]:
    shown: dict[str, Any] = orjson.loads(await browser.evaluate(SNAPSHOT))
    return shown


async def test_the_dashboard_shows_the_counts_change_while_events_flow(
        stack: LocalStack, tmp_path: Path) -> None:
    async with Browser() as browser:
        await browser.open(f"{stack.base_url}/")

        async def shows(element: str, predicate: object) -> bool:
            return bool(predicate(number(await browser.text(element))))  # type: ignore[operator]

        await eventually(lambda: shows("received", lambda n: n == 0), what="first poll shown")
        sender = start_publish(stack, "--events", "6000", "--duplicates", "0.3",
                               "--rate", "1500", "--seed", "3")
        try:
            await eventually(lambda: shows("received", lambda n: 0 < n < 6000),
                             what="received counting up mid-run")
            mid_run = number(await browser.text("received"))
            await eventually(lambda: shows("received", lambda n: n > mid_run),
                             what="received still growing")
        finally:
            out, _ = sender.communicate(timeout=120)
        assert orjson.loads(out)["events_accepted"] == 6000
        stats = await asyncio.to_thread(stack.wait_drained, 60)

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
            for topic, t in sorted(stats["topics"].items())]
        assert len(shown["topics"]) == 5
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
    assert png.startswith(b"\x89PNG")
    # LOGAGG_SCREENSHOT=docs/dashboard.png refreshes the README's picture.
    await asyncio.to_thread(
        Path(os.environ.get("LOGAGG_SCREENSHOT", tmp_path / "dashboard.png")).write_bytes, png)
