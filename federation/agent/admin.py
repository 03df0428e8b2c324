"""The admin HTTP endpoint: /healthz, /readyz, /metrics, JSON documents (/registry, /status) and the /ui page.

/readyz fails only while the agent cannot serve (before its first complete view); what it serves in a
degraded way (etcd unreachable for some registry client, a stale view) is listed in its body, one
`degraded: <part>: <reason>` line each, so an operator sees it without the agent being taken out of
service (a Kubernetes readiness probe failing would stop its DNS for everyone).

Documents take `?site=`, `?service=`, `?limit=` and `?after=` (federation/agent/selection.py); a bad
parameter is a 400 naming it.
"""

from __future__ import annotations

import inspect
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from federation.agent.selection import Selection, parse_selection
from federation.agent.ui import HEADERS, PAGES
from federation.core.errors import ConfigError

log = logging.getLogger(__name__)

Check = Callable[[], str | None]
"""Returns None when fine, else the reason (shown in the response body)."""


class AdminServer:
    """Serves health, readiness, metrics and JSON documents registered by subsystems."""

    def __init__(self, host: str, port: int, metrics: CollectorRegistry) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._live: list[tuple[str, Check]] = []
        self._ready: list[tuple[str, Check]] = []
        self._degraded: list[tuple[str, Check]] = []
        self._documents: dict[str, Callable[[Selection], Any]] = {}
        self._queried: dict[str, Callable[[Mapping[str, str]], Any]] = {}
        self._runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None

    def add_liveness(self, name: str, check: Check) -> None:
        """A check that must pass for /healthz."""
        self._live.append((name, check))

    def add_readiness(self, name: str, check: Check) -> None:
        """A check that must pass for /readyz."""
        self._ready.append((name, check))

    def add_degraded(self, name: str, check: Check) -> None:
        """A condition shown in the /readyz body while it holds (a reason), without failing readiness."""
        self._degraded.append((name, check))

    def add_document(self, path: str, producer: Callable[[Selection], Any]) -> None:
        """Serve `producer(selection)` (or what it returns, awaited) as JSON at `path` (e.g. /registry), the
        selection from the query."""
        self._documents[path] = producer

    def add_query_document(self, path: str, producer: Callable[[Mapping[str, str]], Any]) -> None:
        """Serve `producer(query)` (awaited if it returns an awaitable) as JSON at `path`, the query parameters
        as they come (`/explain`); a ConfigError from it is a 400 with its reason."""
        self._queried[path] = producer

    async def start(self) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (port 0 picks one)."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        for path in self._documents:
            app.router.add_get(path, self._document)
        for path in self._queried:
            app.router.add_get(path, self._query_document)
        for path in PAGES:
            app.router.add_get(path, self._page)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.setblocking(False)
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.bound = (self._host, int(sock.getsockname()[1]))
        log.info("admin endpoint on http://%s:%d", *self.bound)
        return self.bound

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _req: web.Request) -> web.Response:
        return _checks(self._live, "alive")

    async def _readyz(self, _req: web.Request) -> web.Response:
        return _checks(self._ready, "ready", self._degraded)

    async def _metrics_handler(self, _req: web.Request) -> web.Response:
        body = generate_latest(self._metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _page(self, req: web.Request) -> web.Response:
        body, kind = PAGES[req.path]
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)

    async def _document(self, req: web.Request) -> web.Response:
        try:
            selection = parse_selection(req.query)
        except ConfigError as exc:
            return web.Response(status=400, text=f"{req.path}: {exc}\n")
        document = self._documents[req.path](selection)
        if inspect.isawaitable(document):  # an active check (/verify) works while it is asked
            document = await document
        return web.json_response(document)

    async def _query_document(self, req: web.Request) -> web.Response:
        try:
            document = self._queried[req.path](dict(req.query))
            if inspect.isawaitable(document):
                document = await document
        except ConfigError as exc:
            return web.Response(status=400, text=f"{req.path}: {exc}\n")
        return web.json_response(document)


def _checks(checks: list[tuple[str, Check]], word: str,
            degraded: list[tuple[str, Check]] | None = None) -> web.Response:
    failing = [(name, reason) for name, check in checks if (reason := check()) is not None]
    notes = "".join(f"degraded: {name}: {reason}\n" for name, check in degraded or ()
                    if (reason := check()) is not None)
    if failing:
        text = "\n".join(f"not {word}: {name}: {reason}" for name, reason in failing)
        return web.Response(status=503, text=text + "\n" + notes)
    return web.Response(text=f"{word}\n" + notes)
