"""VM health checks against real loopback servers, with the registry (real etcd) following readiness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from federation.core.backoff import Backoff
from federation.core.exportset import ExportSet
from federation.core.keys import Keys
from federation.core.records import ServiceExport
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.mirror import Mirror
from federation.registry.publisher import Publisher
from federation.runtime.values import Value
from federation.sources.vm.health import HealthChecker
from federation.sources.vm.settings import CheckSettings, PortSettings, VmServiceSettings, VmSettings
from tests.util import eventually, site

KEYS = Keys()
INTERVAL = 0.3


class Web:
    """A small HTTP server on 127.0.0.1 that can answer 503, stop listening, and come back on its port."""

    def __init__(self) -> None:
        self.healthy = True
        self.port = 0
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        self.runner = web.AppRunner(app)
        self.site: web.TCPSite | None = None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503, text="ok" if self.healthy else "sick")

    async def start(self) -> None:
        self.site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await self.site.start()
        self.port = self.runner.addresses[0][1]

    async def stop_listening(self) -> None:
        assert self.site is not None
        await self.site.stop()


@pytest.fixture
async def server() -> AsyncIterator[Web]:
    w = Web()
    await w.runner.setup()
    await w.start()
    try:
        yield w
    finally:
        await w.runner.cleanup()


def service(name: str, port: int, check: CheckSettings) -> VmServiceSettings:
    return VmServiceSettings("shop", name, (PortSettings("http", 8080, target_port=port),), address="127.0.0.1",
                             check=check)


def fast(kind: str, **kw: object) -> CheckSettings:
    return CheckSettings(kind=kind, interval=INTERVAL, timeout=INTERVAL * 0.9, rise=2, fall=2, **kw)  # type: ignore[arg-type]


async def test_registry_follows_http_and_tcp_checks(etcd: EtcdProcess, server: Web) -> None:
    settings = VmSettings(services=(
        service("web", server.port, fast("http", path="/healthz")),
        service("raw", server.port, fast("tcp")),
    ))
    client = EtcdClient([etcd.endpoint], timeout=3)
    published: Value[tuple[ServiceExport, ...]] = Value(())
    publisher = Publisher(client, KEYS, Value(site("vm-a")), published, ttl=3, backoff=Backoff(base=0.05, cap=0.5))
    mirror = Mirror(EtcdClient([etcd.endpoint], timeout=3), KEYS, backoff=Backoff(base=0.05, cap=0.5))
    exports = ExportSet(lambda merged: published.set(tuple(merged)))
    metrics = CollectorRegistry()
    checks = HealthChecker(settings, "vm-a", exports.group("checks"), metrics=metrics)

    def ready(name: str) -> bool | None:
        e = mirror.mesh.get().exports.get(("vm-a", "shop", name))
        return None if e is None else e.endpoints[0].ready

    tasks = [asyncio.create_task(c, name=n) for n, c in
             (("publisher", publisher.run()), ("mirror", mirror.run()), ("checks", checks.run()))]
    try:
        await eventually(lambda: ready("web") is True and ready("raw") is True, what="both services ready")
        assert mirror.mesh.get().exports[("vm-a", "shop", "web")].endpoints[0].ports[0].port == server.port

        server.healthy = False  # 503: the http check fails, the tcp check still passes
        await eventually(lambda: ready("web") is False, what="web not ready in the registry")
        assert ready("raw") is True
        assert "503" in next(s.detail for s in checks.status() if s.name == "web")

        server.healthy = True
        await eventually(lambda: ready("web") is True, what="web ready again")

        await server.stop_listening()  # refused: both fail
        await eventually(lambda: ready("web") is False and ready("raw") is False, what="both down")
        await server.start()
        await eventually(lambda: ready("web") is True and ready("raw") is True, what="both back")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert metrics.get_sample_value("meshfed_vm_check_transitions_total", {"namespace": "shop", "name": "web"}) >= 4


async def test_command_check_and_first_round_before_publishing() -> None:
    settings = VmSettings(services=(
        service("good", 1, CheckSettings(kind="command", command=("sh", "-c", "echo fine"), interval=10, timeout=9)),
        service("bad", 1, CheckSettings(kind="command", command=("sh", "-c", "exit 3"), interval=10, timeout=9)),
        service("slow", 1, fast("command", command=("sleep", "30"))),
    ))
    calls: list[Sequence[ServiceExport]] = []
    checks = HealthChecker(settings, "vm-a", calls.append)
    task = asyncio.create_task(checks.run(), name="checks")
    try:
        await eventually(lambda: bool(calls), what="first publication")
        first = {e.name: e.endpoints[0].ready for e in calls[0]}
        assert first == {"good": True, "bad": False, "slow": False}
        status = {s.name: s.detail for s in checks.status()}
        assert status["good"] == "exit 0: fine"
        assert status["bad"] == "exit 3"
        assert status["slow"].startswith("timed out")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
