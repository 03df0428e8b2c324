"""A headless Chromium (Debian's `chromium`) driven over the DevTools protocol, with aiohttp's websocket client.

    async with Browser.start(tmp) as b:
        await b.goto("http://127.0.0.1:15000/ui")
        names = await b.eval("[...document.querySelectorAll('[data-site]')].map(e => e.dataset.site)")
        png = await b.screenshot()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp


def chromium() -> str | None:
    """The browser binary, or None (Debian package chromium; ./bootstrap.sh installs it)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One page of a headless Chromium started for a test (killed by PID when it ends)."""

    def __init__(self, proc: subprocess.Popen[bytes], session: aiohttp.ClientSession,
                 ws: aiohttp.ClientWebSocketResponse) -> None:
        self.proc = proc
        self._session = session
        self._ws = ws
        self._ids = itertools.count(1)

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, tmp: Path, width: int = 1280, height: int = 800) -> AsyncIterator[Browser]:
        binary = chromium()
        assert binary is not None
        log = tmp / "chromium.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-extensions", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--metrics-recording-only", "--mute-audio",
                 f"--window-size={width},{height}", "--remote-debugging-address=127.0.0.1",
                 "--remote-debugging-port=0", f"--user-data-dir={tmp / 'chromium-profile'}", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        session = aiohttp.ClientSession()
        try:
            port = await _devtools_port(log, proc)
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
            browser = cls(proc, session, ws)
            await browser.call("Page.enable")
            await browser.call("Runtime.enable")
            yield browser
        finally:
            await session.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are skipped)."""
        ident = next(self._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(30):
            while True:
                msg = await self._ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"devtools connection ended: {msg.type}")
                data = json.loads(msg.data)
                if data.get("id") == ident:
                    if "error" in data:
                        raise AssertionError(f"{method}: {data['error']}")
                    return dict(data.get("result", {}))

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        got = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in got:
            raise AssertionError(f"{expression}: {got['exceptionDetails']}")
        return got["result"].get("value")

    async def until(self, expression: str, timeout: float = 30.0, what: str = "") -> Any:
        """Poll `expression` until it is truthy; its value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            with contextlib.suppress(AssertionError):
                value = await self.eval(expression)
                if value:
                    return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression}")
            await asyncio.sleep(0.2)

    async def screenshot(self) -> bytes:
        """A PNG of the whole page."""
        size = await self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})
        return base64.b64decode(shot["data"])


async def _devtools_port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
        if m:
            return int(m.group(1))
        await asyncio.sleep(0.1)
    raise AssertionError(f"chromium did not say where DevTools listens: {log.read_text(errors='replace')[-2000:]}")
