"""The agent's reload shell: SIGHUP (or `systemctl reload`) reads the config again and applies what can
change live (`federation.agent.reload.plan`); a bad config is refused and the running one stays."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from federation.agent.reload import plan
from federation.agent.settings import AgentSettings
from federation.core.errors import ConfigError
from federation.runtime.values import Value

log = logging.getLogger(__name__)


class Reloader:
    """Turns reload requests into new settings in `config`, one at a time, with metrics and a status."""

    def __init__(self, config: Value[AgentSettings], load: Callable[[], AgentSettings] | None,
                 registry: CollectorRegistry) -> None:
        self.config = config
        self._load = load
        self._requested = asyncio.Event()
        self._results = Counter("meshfed_config_reloads", "Config reloads by result (applied, unchanged, refused)",
                                ["result"], registry=registry)
        self._pending = Gauge("meshfed_config_restart_pending",
                              "Settings changed in the file that take effect only after a restart", registry=registry)
        self.restart: tuple[str, ...] = ()
        """Fields changed in the file that wait for a restart (running with their old values)."""
        self.last: dict[str, Any] | None = None
        """The last reload: when, its result, what it applied or why it was refused."""

    def request(self) -> None:
        """Ask for a reload (a signal handler calls this)."""
        self._requested.set()

    async def run(self) -> None:
        """Reload on every request, until cancelled."""
        while True:
            await self._requested.wait()
            self._requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Read the config again and apply it; False if it was refused (the running config stays)."""
        if self._load is None:
            log.warning("config reload asked for, but this agent was not started from a file")
            return False
        try:
            new = await asyncio.to_thread(self._load)
            outcome = plan(self.config.get(), new)
        except ConfigError as exc:
            self._results.labels("refused").inc()
            self.last = {"at": time.time(), "result": "refused", "error": str(exc)}
            log.error("config reload refused: %s; the running config stays", exc)
            return False
        self.restart = outcome.restart
        self._pending.set(len(outcome.restart))
        result = "applied" if outcome.live else "unchanged"
        self._results.labels(result).inc()
        self.last = {"at": time.time(), "result": result, "applied": list(outcome.live),
                     "needsRestart": list(outcome.restart)}
        self.config.set(outcome.applied)
        if outcome.live:
            log.info("config reloaded from %s: applied %s", new.source, ", ".join(outcome.live))
        else:
            log.info("config reloaded from %s: nothing that can change live changed", new.source)
        if outcome.restart:
            log.warning("config reload: %s changed but take(s) effect only after a restart; running with the old "
                        "value(s) until then", ", ".join(outcome.restart))
        return True

    def describe(self) -> dict[str, Any]:
        """For `meshfed status`."""
        return {"source": self.config.get().source, "lastReload": self.last, "needsRestart": list(self.restart)}
