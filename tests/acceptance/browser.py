"""A real headless Chromium, driven over the DevTools protocol with aiohttp's websocket client.

Enough of the protocol to load a page, read values out of it, click and type as a user does,
see the requests it sends, and take a screenshot; no browser-automation dependency needed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1280,900", "--hide-scrollbars"]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("no Chromium: install it with `apt-get install chromium`")


class Browser:
    def __init__(self) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="logagg-chromium-"))
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []  # of the domains enabled, e.g. Network

    async def __aenter__(self) -> Browser:
        self.process = await asyncio.create_subprocess_exec(
            chromium_binary(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        port = await self._debugging_port()
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as answer:
            targets = await answer.json()
        page = next(t for t in targets if t["type"] == "page")
        self.socket = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def _debugging_port(self) -> int:
        """Chromium writes the port it chose into the profile once it listens."""
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not marker.exists() or not marker.read_text().strip():
            assert self.process is not None and self.process.returncode is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium did not open its debugging port"
            await asyncio.sleep(0.05)
        return int(marker.read_text().split()[0])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.socket is not None
        call_id = next(self._ids)
        await self.socket.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self.socket.receive_json(timeout=30)
            if message.get("id") == call_id:
                assert "error" not in message, message["error"]
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    async def seen(self, method: str) -> list[dict[str, Any]]:
        """The params of every `method` event so far (e.g. Network.requestWillBeSent, once
        Network.enable was called)."""
        await self.evaluate("0")  # reads in the events that came since the last call
        return [event["params"] for event in self.events if event["method"] == method]

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while await self.evaluate("document.readyState") != "complete":
            assert time.monotonic() < deadline, f"{url} did not load"
            await asyncio.sleep(0.05)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def text(self, element_id: str) -> str:
        return str(await self.evaluate(f"document.getElementById({element_id!r}).textContent"))

    async def click(self, selector: str) -> None:
        """A left click in the middle of the element, as the mouse would make it."""
        x, y = await self.evaluate(f"""(() => {{
            const element = document.querySelector({selector!r});
            element.scrollIntoView({{block: "center"}});
            const box = element.getBoundingClientRect();
            return [box.x + box.width / 2, box.y + box.height / 2];
        }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                            clickCount=1)

    async def type_into(self, selector: str, text: str) -> None:
        """Click into the field and type `text` there, as the keyboard would."""
        await self.click(selector)
        await self.call("Input.insertText", text=text)

    async def screenshot(self) -> bytes:
        """The page as PNG bytes."""
        shot = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])
