"""The agent's composition root: registry sync, admin and (later) DNS, gateway and sources, in one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

import federation
from federation.agent.reporting import registry_report
from federation.agent.settings import AgentConfig
from federation.core.errors import LocalProtocolError
from federation.core.keys import Keys
from federation.core.records import Locality, ServiceExport, Site
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient, TLSFiles
from federation.registry.mirror import Mirror, RegistryMetrics
from federation.registry.publisher import Publisher
from federation.runtime.files import write_private

if TYPE_CHECKING:
    from federation.agent.dataplane import DataPlane

log = logging.getLogger(__name__)

ADMIN_ADDR_FILE = "admin.addr"


class _Shutdown(Exception):
    """Raised inside the task group to end it in order."""


class Agent:
    """One site's agent: publishes the site's exports and mirrors the mesh."""

    def __init__(self, config: AgentConfig) -> None:
        from federation.agent.dataplane import parse_sections

        self.config = config
        self.sections = parse_sections(config)
        self.plane: DataPlane | None = None
        self.keys = Keys(config.registry.prefix)
        self.metrics = CollectorRegistry()
        self.etcd: EtcdProcess | None = None
        self.mirror: Mirror | None = None
        self.publisher: Publisher | None = None
        self.admin_address: tuple[str, int] | None = None

    def site_record(self) -> Site:
        """The site record this agent publishes."""
        s = self.config.site
        return Site(
            name=s.name,
            network=s.network,
            locality=Locality(s.region, s.zone),
            kind=s.kind,
            agent_version=federation.__version__,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; a subsystem that fails ends the agent with its error."""
        cfg = self.config
        state = cfg.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        endpoints = cfg.registry.endpoints
        if not endpoints:
            self.etcd = EtcdProcess(data_dir=state / "etcd")
            await asyncio.to_thread(self.etcd.start)
            endpoints = (self.etcd.endpoint,)
            log.info("no registry.endpoints configured: started embedded etcd at %s", self.etcd.endpoint)
        try:
            await self._run(endpoints, stop)
        finally:
            if self.etcd is not None:
                await asyncio.to_thread(self.etcd.stop)
                log.info("embedded etcd stopped")

    async def _run(self, endpoints: tuple[str, ...], stop: asyncio.Event) -> None:
        from federation.agent.admin import AdminServer
        from federation.agent.dataplane import DataPlane

        cfg = self.config
        tls = TLSFiles(cfg.registry.tls.ca, cfg.registry.tls.cert, cfg.registry.tls.key) if cfg.registry.tls else None

        def client() -> EtcdClient:
            return EtcdClient(endpoints, tls=tls, timeout=cfg.registry.timeout)

        mirror = self.mirror = Mirror(client(), self.keys, metrics=RegistryMetrics(self.metrics))
        exports_sink = _Deferred()
        plane = self.plane = DataPlane(cfg, self.sections, self.keys, self.metrics, mirror.view, client,
                                       exports_sink)
        admin = AdminServer(cfg.admin.address, cfg.admin.port, self.metrics)
        pending: list[tuple[str, Coroutine[Any, Any, None]]] = []
        try:
            await plane.start(lambda name, coro: pending.append((name, coro)))
            publisher = self.publisher = Publisher(
                client(), self.keys, plane.site_record(self.site_record()), plane.merged_exports(),
                ttl=cfg.registry.lease_ttl, lease_file=cfg.state_dir / "lease",
            )  # fmt: skip
            exports_sink.target = publisher.set_exports
            plane.on_site_changed = lambda: publisher.set_site(plane.site_record(self.site_record()))
            mirror.subscribe(plane.on_view)
            admin.add_readiness("registry", lambda: None if mirror.synced.is_set() else "initial registry sync pending")
            admin.add_readiness("publisher", lambda: None if publisher.published.is_set() else "site not yet published")
            admin.add_document("/registry", lambda: registry_report(
                mirror.view(), mirror.catalog.rejected, source=f"agent of site {cfg.site.name}",
                stale=mirror.stale, staleness=mirror.staleness(), error=mirror.error,
            ))  # fmt: skip
            admin.add_document("/status", lambda: self.status())
            self.admin_address = await admin.start()
            host, port = self.admin_address
            write_private(cfg.state_dir / ADMIN_ADDR_FILE, f"{host}:{port}\n".encode())
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_guard("registry mirror", mirror.run()), name="registry-mirror")
                tg.create_task(_guard("registry publisher", _after(plane.exports_ready(), publisher.run())),
                               name="registry-publisher")
                for name, coro in pending:
                    tg.create_task(_guard(name, coro), name=name)
                pending.clear()
                tg.create_task(_stop_on(stop), name="stop-waiter")
        except* _Shutdown:
            log.info("agent for site %s stopped", cfg.site.name)
        finally:
            for _, coro in pending:
                coro.close()
            await admin.close()
            await plane.close()
            with contextlib.suppress(FileNotFoundError):
                (cfg.state_dir / ADMIN_ADDR_FILE).unlink()

    def status(self) -> dict[str, Any]:
        """What `meshfed status` prints: site, registry connection, exports, checks, imports."""
        mirror, cfg = self.mirror, self.config
        out: dict[str, Any] = {
            "site": cfg.site.name,
            "network": cfg.site.network,
            "kind": cfg.site.kind,
            "locality": f"{cfg.site.region}/{cfg.site.zone}".strip("/"),
            "registry": {
                "endpoints": list(cfg.registry.endpoints) or [self.etcd.endpoint if self.etcd else "embedded"],
                "synced": bool(mirror and mirror.synced.is_set()),
                "stale": bool(mirror and mirror.stale),
                "stalenessSeconds": None if mirror is None or mirror.staleness() == float("inf")
                else round(mirror.staleness(), 1),
                "error": mirror.error if mirror else None,
                "lease": f"{self.publisher.lease:x}" if self.publisher and self.publisher.lease else None,
            },
        }
        if self.plane is not None:
            out.update(self.plane.status())
        return out


class _Deferred:
    """Forwards exports to the publisher once it exists (the data plane starts first, to name its gateway)."""

    def __init__(self) -> None:
        self.target: Callable[[Sequence[ServiceExport]], None] | None = None

    def __call__(self, exports: Sequence[ServiceExport]) -> None:
        if self.target is not None:
            self.target(exports)


async def _guard(name: str, work: Awaitable[None]) -> None:
    """Log the death of a long-lived task loudly; its end ends the agent."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s has failed; stopping the agent", name)
        raise
    raise LocalProtocolError(f"{name} returned, which it never should")


async def _after(first: Awaitable[None], then: Awaitable[None]) -> None:
    """Run `then` once `first` is done (the publisher waits for a complete export list)."""
    await first
    await then


async def _stop_on(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Shutdown
