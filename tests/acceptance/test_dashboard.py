"""The live dashboard at `/`, loaded in a real headless Chromium while events flow."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from services.stack.local import LocalStack
from tests.acceptance.browser import Browser
from tests.acceptance.conftest import start_publish
from tests.helpers import eventually


def number(text: str) -> int:
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else -1


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
            sender.communicate(timeout=120)
        await eventually(lambda: shows("unique", lambda n: n == 4200), within=60,
                         what="every unique event shown")
        assert number(await browser.text("duplicates")) == 1800
        await eventually(lambda: _verdict_is_exact(browser), what="balance shown as exact")
        topics = await browser.evaluate("document.querySelectorAll('#topics tr').length")
        assert topics == 5
        png = await browser.screenshot()
    assert png.startswith(b"\x89PNG")
    # LOGAGG_SCREENSHOT=docs/dashboard.png refreshes the README's picture.
    await asyncio.to_thread(
        Path(os.environ.get("LOGAGG_SCREENSHOT", tmp_path / "dashboard.png")).write_bytes, png)


async def _verdict_is_exact(browser: Browser) -> bool:
    return await browser.text("verdict") == "exact"
