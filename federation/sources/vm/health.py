"""Runs the health checks of the declared VM services and publishes their exports as readiness changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from federation.core.records import Locality, ServiceExport
from federation.runtime.values import Changes, Readable
from federation.sources.vm.checking import UNKNOWN_LOCALITY, Change, CheckState, ServiceId, check_port, convert, observe
from federation.sources.vm.netlink import own_address
from federation.sources.vm.settings import AUTO, VmServiceSettings, VmSettings

log = logging.getLogger(__name__)

_DETAIL_MAX = 200
"""Characters of command output or error text kept for `meshfed status`."""


@dataclass(frozen=True, slots=True)
class CheckStatus:
    """One service's check as `meshfed status` shows it."""

    namespace: str
    name: str
    kind: str
    address: str
    ready: bool
    checked: bool
    since: float
    detail: str


class CheckMetrics:
    """meshfed_vm_check_* series in the agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("namespace", "name")
        self.ready = Gauge("meshfed_vm_check_ready", "1 if the service's health check says ready", labels,
                           registry=registry)
        self.results = Counter("meshfed_vm_checks", "Health check results", (*labels, "result"), registry=registry)
        self.transitions = Counter("meshfed_vm_check_transitions", "Readiness changes", labels, registry=registry)


class HealthChecker:
    """Checks every service of `settings.services` on its interval; `on_exports` gets the site's exports.

    The first round of checks completes before the first `on_exports` call, so a restart never publishes
    an unchecked (not ready) endpoint over a ready one. Later calls happen only when readiness changes.
    """

    def __init__(
        self,
        settings: VmSettings,
        site_name: str,
        on_exports: Callable[[Sequence[ServiceExport]], None],
        *,
        locality: Locality = UNKNOWN_LOCALITY,
        metrics: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        live: Readable[VmSettings] | None = None,
    ) -> None:
        self._settings = settings
        self._live = live
        """Settings to follow (a reload); None: `settings` for good."""
        self._site = site_name
        self._on_exports = on_exports
        self._locality = locality
        self._metrics = CheckMetrics(metrics) if metrics is not None else None
        self._clock = clock
        self._states: dict[ServiceId, CheckState] = {}
        self._addresses: dict[ServiceId, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self.ready = asyncio.Event()
        """Set once the first round of checks has been published."""

    async def run(self) -> None:
        """Check until cancelled; when `live` holds new settings (a reload), check the new service list."""
        # A fresh connection per check: a kept-alive one would pass while the listener is gone.
        self._session = aiohttp.ClientSession(trust_env=False, connector=aiohttp.TCPConnector(force_close=True))
        try:
            if self._live is None:
                await self._round(self._settings)
                return
            with Changes(self._live) as changes:
                while True:
                    self._settings = self._live.get()
                    try:
                        async with asyncio.TaskGroup() as tg:
                            tg.create_task(self._round(self._settings), name="vm-checks")
                            tg.create_task(_raise_on(changes), name="vm-checks-reload")
                    except* _Reloaded:
                        log.info("vm checks: the service list was reloaded (%d services)",
                                 len(self._live.get().services))
        finally:
            await asyncio.shield(self._session.close())

    async def _round(self, settings: VmSettings) -> None:
        """Check `settings.services` until cancelled: a first round (published), then each on its interval."""
        services = settings.services
        known = {(s.namespace, s.name) for s in services}
        for key in [k for k in self._states if k not in known]:  # a service no longer declared
            del self._states[key]
            self._addresses.pop(key, None)
        await self._resolve_addresses(services)
        await asyncio.gather(*(self._check_once(s) for s in services if (s.namespace, s.name) not in self._states
                               or not self.ready.is_set()))
        self._publish()
        self.ready.set()
        async with asyncio.TaskGroup() as tg:
            for s in services:
                tg.create_task(self._loop(s), name=f"vm-check-{s.namespace}-{s.name}")
            # An empty service list still runs until cancelled, like every long-lived task.
            tg.create_task(asyncio.Event().wait(), name="vm-checks-idle")

    def status(self) -> list[CheckStatus]:
        """Every declared service's check result, for `meshfed status` and the admin endpoint."""
        out = []
        for s in self._settings.services:
            key = (s.namespace, s.name)
            st = self._states.get(key, CheckState())
            out.append(CheckStatus(s.namespace, s.name, s.check.kind, self._addresses.get(key, ""), st.ready,
                                   st.checked, st.since, st.detail))
        return out

    def exports(self) -> list[ServiceExport]:
        """The exports as of the last results."""
        return convert(self._site, self._settings.services, self._addresses, self._states, self._locality)

    # ---------------------------------------------------------------- private

    async def _resolve_addresses(self, services: Sequence[VmServiceSettings]) -> None:
        host: str | None = None
        for s in services:
            address = self._settings.address_of(s)
            if address == AUTO:
                if host is None:
                    host = await own_address()
                    log.info("vm services without an address use the host's own address %s", host)
                address = host
            self._addresses[(s.namespace, s.name)] = address

    async def _loop(self, service: VmServiceSettings) -> None:
        interval = service.check.interval
        next_at = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if next_at < time.monotonic():  # a slow check (or a suspended host): skip, do not burst
                next_at = time.monotonic() + interval
            if await self._check_once(service):
                self._publish()

    async def _check_once(self, service: VmServiceSettings) -> bool:
        """Run one check and apply it; True if readiness changed."""
        key = (service.namespace, service.name)
        passed, detail = await self._probe(service, self._addresses[key])
        state, change = observe(self._states.get(key, CheckState()), passed, detail, self._clock(), service.check)
        self._states[key] = state
        if self._metrics is not None:
            self._metrics.results.labels(*key, "pass" if passed else "fail").inc()
            self._metrics.ready.labels(*key).set(1 if state.ready else 0)
            if change is not Change.NONE:
                self._metrics.transitions.labels(*key).inc()
        if change is Change.UP:
            log.info("vm service %s/%s is ready: %s", *key, detail)
        elif change is Change.DOWN:
            log.warning("vm service %s/%s is not ready: %s", *key, detail)
        return change is not Change.NONE

    def _publish(self) -> None:
        self._on_exports(self.exports())

    async def _probe(self, service: VmServiceSettings, address: str) -> tuple[bool, str]:
        check = service.check
        try:
            async with asyncio.timeout(check.deadline):
                if check.kind == "tcp":
                    return await _tcp(address, check_port(service))
                if check.kind == "http":
                    assert self._session is not None
                    return await _http(self._session, address, check_port(service), check.path,
                                       check.status_min, check.status_max)
                if check.kind == "command":
                    return await _command(check.command)
                return True, "not checked (kind none)"
        except TimeoutError:
            return False, f"timed out after {check.deadline:g}s"
        except (OSError, aiohttp.ClientError) as exc:
            return False, _short(f"{type(exc).__name__}: {exc}")


async def _tcp(address: str, port: int) -> tuple[bool, str]:
    _, writer = await asyncio.open_connection(address, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"tcp connect to {_hostport(address, port)} succeeded"


async def _http(session: aiohttp.ClientSession, address: str, port: int, path: str, lo: int, hi: int
                ) -> tuple[bool, str]:
    url = f"http://{_hostport(address, port)}{path}"
    async with session.get(url, allow_redirects=False) as resp:
        await resp.read()
        return lo <= resp.status <= hi, f"GET {url}: {resp.status}"


async def _command(argv: tuple[str, ...]) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await proc.communicate()
    except BaseException:  # timeout or cancellation: do not leave the child behind
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    text = output.decode(errors="replace").strip()
    return proc.returncode == 0, _short(f"exit {proc.returncode}" + (f": {text}" if text else ""))


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _short(text: str) -> str:
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."


class _Reloaded(Exception):
    """The settings changed: end this round of checks and start one with the new ones."""


async def _raise_on(changes: Changes) -> None:
    await changes.wait()
    raise _Reloaded
