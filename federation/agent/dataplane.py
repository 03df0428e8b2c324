"""The agent's subsystems beyond the registry: gateway, egress, DNS, VIPs and the VM and Kubernetes sources.

Part of the composition root (with agent.py): the one place where `federation` meets `gateway`.
Section settings are parsed here, at start, so a bad section fails with file, field and reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import operator
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from federation.agent.settings import AgentConfig
from federation.core.errors import ConfigError
from federation.core.keys import Keys
from federation.core.records import Gateway, Locality, ServiceExport, Site
from federation.core.view import Event, MeshView
from federation.dns.server import DnsServer
from federation.dns.settings import DnsSettings, parse_dns_settings
from federation.pki.issuing import load_site
from federation.registry.allocator import VipAllocator
from federation.registry.etcd import EtcdClient
from federation.runtime.values import Value
from federation.sources.kubernetes.settings import KubernetesSettings, parse_kubernetes_settings
from federation.sources.kubernetes.source import KubernetesSource
from federation.sources.vm.exportset import ExportSet
from federation.sources.vm.health import HealthChecker
from federation.sources.vm.mdns import LanDiscovery
from federation.sources.vm.netlink import VipInterface, own_address
from federation.sources.vm.settings import VmSettings, parse_vm_settings
from federation.sources.vm.source import VmSource
from gateway.eastwest import EastWestGateway
from gateway.egress import Egress
from gateway.settings import GatewaySettings, parse_gateway_settings
from gateway.tls import CertificateStore
from gateway.workers import GatewayWorkers

log = logging.getLogger(__name__)

Spawn = Callable[[str, Coroutine[Any, Any, None]], None]


@dataclass(frozen=True, slots=True)
class Sections:
    """Every subsystem's settings, validated."""

    gateway: GatewaySettings
    dns: DnsSettings
    vm: VmSettings
    kubernetes: KubernetesSettings


def parse_sections(config: AgentConfig) -> Sections:
    """Validate the dns, gateway, vm and kubernetes sections; ConfigError names file, field and reason."""
    try:
        return Sections(
            gateway=parse_gateway_settings(config.sections.get("gateway", {}), "gateway"),
            dns=parse_dns_settings(config.sections.get("dns", {}), "dns"),
            vm=parse_vm_settings(config.sections.get("vm", {}), "vm"),
            kubernetes=parse_kubernetes_settings(config.sections.get("kubernetes", {}), "kubernetes"),
        )
    except ConfigError as exc:
        raise ConfigError(f"{config.source}: {exc}") from None


class DataPlane:
    """Starts and stops the subsystems of one site and feeds them registry views."""

    def __init__(self, config: AgentConfig, sections: Sections, keys: Keys, metrics: CollectorRegistry,
                 view: Callable[[], MeshView], etcd_client: Callable[[], EtcdClient],
                 set_exports: Callable[[Sequence[ServiceExport]], None]) -> None:
        self.config = config
        self.sections = sections
        self.keys = keys
        self.metrics = metrics
        self.view = view
        self.mesh = Value(view(), name="mesh view", same=operator.is_)
        """The registry view for the east-west gateway, set after every burst of registry changes."""
        self._etcd_client = etcd_client
        self._sink = set_exports
        self._synced = asyncio.Event()
        self.exports = ExportSet(set_exports)
        self.vm: VmSource | None = None
        self._site_vips = _SiteVips(self)
        self.cluster_ips: dict[tuple[str, str], str] = {}
        """ClusterIPs of the derived Services (Kubernetes sites), refreshed by the kubernetes-follow task."""
        self.on_site_changed: Callable[[], None] | None = None
        """Called when the site record changes (gateway address learnt later); the agent republishes."""
        self.certs: CertificateStore | None = None
        self.eastwest: EastWestGateway | None = None
        self.workers: GatewayWorkers | None = None
        self.egress: Egress | None = None
        self.dns: DnsServer | None = None
        self.vips: VipAllocator | None = None
        self.vip_interface: VipInterface | None = None
        self.checker: HealthChecker | None = None
        self.discovery: LanDiscovery | None = None
        self.kubernetes: KubernetesSource | None = None
        self.gateway_record: Gateway | None = None

    @property
    def site(self) -> str:
        return self.config.site.name

    @property
    def locality(self) -> Locality:
        return Locality(self.config.site.region, self.config.site.zone)

    async def start(self, spawn: Spawn) -> None:
        """Bind every listener (so the site record can name the gateway) and spawn the long-lived tasks."""
        s = self.sections
        if self.config.site.kind != "vm":
            self.exports.group("static")(self.config.exports)
        if s.gateway.ca_dir:
            await self._start_gateway(spawn)
        else:
            log.warning("gateway.ca_dir is not set: no east-west gateway and no egress for this site "
                        "(cross-network traffic is off; run `meshfed ca site` and set it)")
        if s.dns.enabled:
            if self.config.site.kind == "vm":
                self.vips = VipAllocator(self._etcd_client(), self.keys, ranges=s.dns.vip_ranges, grace=s.dns.vip_grace)
                self.vips.subscribe(self._vips_changed)
                spawn("vip-allocator", _after(self._synced.wait(), self.vips.run(self.view)))
            self.dns = DnsServer(s.dns, local_site=self.site, vip_source=self._vip_source(), registry=self.metrics)
            await self.dns.start()
        if self.config.site.kind == "vm":
            self.vm = VmSource(s.vm, self.site, self._sink, static_exports=self.config.exports,
                               locality=self.locality, metrics=self.metrics)
            self.vm.on_vips_changed = self._vips_on_interface
            self.vip_interface = self.vm.vips if s.vm.vip_interface else None
            self.checker = self.vm.checks
            self.discovery = self.vm.discovery
            spawn("vm-source", self.vm.run())
        if s.kubernetes.enabled:
            self.kubernetes = KubernetesSource(
                s.kubernetes, self.site, _as_list(self.exports.group("kubernetes")), egress_target=self._egress_target,
                locality=self.locality, metrics=self.metrics,
            )  # fmt: skip
            spawn("kubernetes-source", self.kubernetes.run())
            spawn("kubernetes-follow", self._follow_kubernetes())

    def on_view(self, view: MeshView, _events: Sequence[Event]) -> None:
        """Called by the mirror after each burst of registry changes (and once after the initial sync)."""
        self._synced.set()
        self.mesh.set(view)
        if self.egress is not None:
            self.egress.update(view)
        if self.workers is not None:
            self.workers.update(view)
        if self.dns is not None:
            self.dns.update(view, self._down_sites())
        if self.vips is not None:
            self.vips.kick()
        if self.kubernetes is not None:
            self.kubernetes.update(view)
        if self.vm is not None:
            self.vm.update(view, self._vip_source())

    async def exports_ready(self) -> None:
        """Wait until the site's export list is complete (first checks done, caches listed).

        The publisher starts only then: started with a partial list it would delete the site's other
        records of the previous run, and re-added records would lose their export time (MCS age).
        """
        if self.vm is not None:
            await self.vm.ready.wait()
        if self.kubernetes is not None:
            await self.kubernetes.synced.wait()

    def merged_exports(self) -> tuple[ServiceExport, ...]:
        """The exports the site publishes now."""
        return self.vm.exports.merged() if self.vm is not None else self.exports.merged()

    def site_record(self, base: Site) -> Site:
        """The site record with this site's gateway and CA chain."""
        if self.certs is None:
            return base
        gateways = (self.gateway_record,) if self.gateway_record is not None else ()
        return Site(base.name, base.network, base.locality, base.kind, gateways, self.certs.ca_chain_pem,
                    base.agent_version)

    async def close(self) -> None:
        """Stop listeners and tunnels."""
        for closer in (self.egress, self.eastwest, self.workers, self.dns):
            if closer is not None:
                await closer.close()
        if self.certs is not None:
            self.certs.close()

    def status(self) -> dict[str, Any]:
        """What `meshfed status` shows about the data plane."""
        view = self.view()
        imports = []
        listeners = self.egress.listeners() if self.egress is not None else {}
        for (ns, name), svc in view.services().items():
            if all(e.site == self.site for e in svc.exports):
                continue
            imports.append({
                "service": f"{ns}/{name}",
                "vips": list(self._vip_source().addresses(ns, name)) if self.dns else [],
                "listeners": {k[2]: f"{h}:{p}" for k, (h, p) in listeners.items() if k[:2] == (ns, name)},
                "sites": [
                    {"site": e.site, "network": view.sites[e.site].network,
                     "via": "direct" if view.sites[e.site].network == self.config.site.network
                     else ",".join(f"{g.address}:{g.port}" for g in view.sites[e.site].gateways) or "no gateway",
                     "ready": sum(1 for ep in e.endpoints if ep.ready), "endpoints": len(e.endpoints)}
                    for e in svc.exports if e.site in view.sites
                ],
            })  # fmt: skip
        checks = [
            {"service": f"{c.namespace}/{c.name}", "address": c.address, "ready": c.ready, "detail": c.detail}
            for c in (self.checker.status() if self.checker is not None else [])
        ]
        vif = self.vip_interface
        return {
            "gateway": None if self.eastwest is None or self.gateway_record is None else {
                "listen": "{}:{}".format(*self.eastwest.address),
                "advertised": f"{self.gateway_record.address}:{self.gateway_record.port}",
                "certificateValidUntil": self.certs.issued.cert.not_valid_after_utc.isoformat() if self.certs else None,
            },
            "dns": None if self.dns is None else {
                "udp": [f"{h}:{p}" for h, p in self.dns.udp_addresses],
                "tcp": [f"{h}:{p}" for h, p in self.dns.tcp_addresses],
                "zone": self.sections.dns.zone,
            },
            "vipInterface": None if vif is None else {
                "name": vif.name, "fallback": vif.fallback_reason or None,
                "addresses": sorted(str(a) for a in vif.addresses),
            },
            "exports": [{"service": f"{e.namespace}/{e.name}", "ready": sum(1 for ep in e.endpoints if ep.ready),
                         "endpoints": len(e.endpoints)} for e in self.exports.merged()],
            "checks": checks,
            "imports": imports,
        }  # fmt: skip

    # -- private

    async def _start_gateway(self, spawn: Spawn) -> None:
        gw = self.sections.gateway
        try:
            site_ca = await asyncio.to_thread(load_site, Path(gw.ca_dir))
        except Exception as exc:
            raise ConfigError(f"{self.config.source}: gateway.ca_dir: {exc}") from None
        cert_dir = Path(gw.cert_dir) if gw.cert_dir else self.config.state_dir / "gateway"
        self.certs = CertificateStore(site_ca, gw.name, cert_dir, lifetime=dt.timedelta(seconds=gw.cert_lifetime))
        if self.certs.site != self.site:
            raise ConfigError(f"{self.config.source}: gateway.ca_dir: the CA in {gw.ca_dir} belongs to site "
                              f"{self.certs.site!r}, not {self.site!r}")
        self.eastwest = EastWestGateway(self.site, self.mesh, self.certs.server, self.certs.bundle, gw, self.metrics)
        await self.eastwest.start()
        spawn("gateway-tunnels", self.eastwest.run())
        if gw.workers > 1:
            # More processes on the same port (SO_REUSEPORT), fed each registry view and renewed certificate.
            self.workers = GatewayWorkers(self.site, gw, self.certs.chain_file, self.certs.key_file,
                                          self.certs.bundle_file, gw.workers - 1)
            await self.workers.start(self.eastwest.address[1], self.view())
            self.certs.on_renew = self.workers.reload
        host, port = self.eastwest.address
        advertised = self.config.site.gateway_address or host
        if ipaddress.ip_address(host).is_unspecified and not self.config.site.gateway_address:
            if self.sections.kubernetes.enabled:
                log.info("gateway address not configured: waiting for the east-west LoadBalancer's ingress address")
                await self._start_egress(spawn)
                return
            if self.config.site.kind != "vm":
                raise ConfigError(f"{self.config.source}: site.gateway_address: the gateway listens on {host}; "
                                  "say which address other networks reach it at")
            # A VM's gateway is reached at the VM's own address, as an operator would expect.
            vm_address = self.sections.vm.address
            advertised = vm_address if vm_address != "auto" else await own_address()
            log.info("gateway advertised at this VM's address %s (set site.gateway_address to change it)", advertised)
        self.gateway_record = Gateway(gw.name, advertised, port)
        await self._start_egress(spawn)

    async def _start_egress(self, spawn: Spawn) -> None:
        assert self.certs is not None
        vips_here = self.config.site.kind == "vm" and bool(self.sections.vm.vip_interface)
        self.egress = Egress(self.site, self.view, self.certs.client, self.certs.bundle, self.sections.gateway,
                             self.metrics, bind_for=self._bind_for, local_services=vips_here)
        await self.egress.start()
        spawn("certificate-renewal", self.certs.run())
        spawn("gateway-health", self._follow_gateway_health())

    def _vip_source(self) -> _SiteVips:
        """Where a ClusterSetIP answer comes from: the mesh VIP on VMs, the ServiceImport's IP on Kubernetes."""
        return self._site_vips

    def _bind_for(self, key: tuple[str, str, str]) -> tuple[str, int]:
        """VM sites listen on VIP:port (applications use the DNS name unchanged); others on loopback ports."""
        gw = self.sections.gateway
        vif = self.vip_interface
        if self.vips is not None and vif is not None and not vif.fallback:
            vip = self._vip_source().addresses(key[0], key[1])
            svc = self.view().service(key[0], key[1])
            port = next((p.port for p in svc.ports if p.name == key[2]), 0) if svc else 0
            if vip and port and ipaddress.ip_address(vip[0]) in vif.addresses:
                return vip[0], port
        return gw.egress_address, gw.egress_port

    def _egress_target(self, namespace: str, name: str, port_name: str) -> tuple[str, int] | None:
        if self.egress is None:
            return None
        return self.egress.listeners().get((namespace, name, port_name))

    def _down_sites(self) -> frozenset[str]:
        return self.egress.health.down(time.monotonic()) if self.egress is not None else frozenset()

    async def _follow_gateway_health(self, interval: float = 1.0) -> None:
        """DNS leaves out sites whose gateway is known to be down (while others can serve), and takes them
        back once a tunnel works again or the hold has passed."""
        seen: frozenset[str] = frozenset()
        while True:
            await asyncio.sleep(interval)
            down = self._down_sites()
            if down != seen and self._synced.is_set():
                if down - seen:
                    log.warning("gateways of %s unreachable: DNS answers leave them out while others serve",
                                ", ".join(sorted(down - seen)))
                seen = down
                if self.dns is not None:
                    self.dns.update(self.view(), down)

    async def _follow_kubernetes(self, interval: float = 1.0) -> None:
        """DNS follows the derived Services' ClusterIPs; the site record follows the LoadBalancer's address."""
        assert self.kubernetes is not None
        seen: dict[tuple[str, str], str] = {}
        while True:
            await asyncio.sleep(interval)
            ips = self.kubernetes.imported_ips()
            if ips != seen:
                seen = self.cluster_ips = ips
                if self.dns is not None:
                    self.dns.refresh()
            lb = self.kubernetes.eastwest_address()
            if (self.eastwest is not None and not self.config.site.gateway_address and lb
                    and (self.gateway_record is None or self.gateway_record.address != lb)):
                self.gateway_record = Gateway(self.sections.gateway.name, lb, self.eastwest.address[1])
                log.info("gateway advertised at the LoadBalancer's address %s:%d", lb, self.gateway_record.port)
                if self.on_site_changed is not None:
                    self.on_site_changed()

    def _vips_changed(self) -> None:
        """The VIP table in etcd changed: DNS answers and the interface follow."""
        if self.dns is not None:
            self.dns.refresh()
        if self.vm is not None and self._synced.is_set():  # an empty view before the sync would drop every VIP
            self.vm.update(self.view(), self._vip_source())

    def _vips_on_interface(self) -> None:
        """The interface holds new VIPs: let egress listeners move onto them."""
        if self.egress is not None:
            self.egress.update(self.view())


async def _after(first: Coroutine[Any, Any, Any], then: Coroutine[Any, Any, None]) -> None:
    await first
    await then


def _as_list(sink: Callable[[Sequence[ServiceExport]], None]) -> Callable[[Iterable[ServiceExport]], None]:
    return lambda exports: sink(list(exports))


class _SiteVips:
    """Where ClusterSetIP answers come from, decided per lookup (the Kubernetes source starts after DNS):
    the ServiceImport's ClusterIP on Kubernetes, else the mesh-wide VIP (IPv4 only: the egress binds one
    address per service port). Each lookup is a dictionary get: DNS builds call it once per service."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    def addresses(self, namespace: str, name: str) -> tuple[str, ...]:
        plane = self._plane
        if plane.kubernetes is not None:
            ip = plane.cluster_ips.get((namespace, name))
            return (ip,) if ip else ()
        if plane.vips is None:
            return ()
        return tuple(a for a in plane.vips.addresses(namespace, name) if ":" not in a)
