"""The site's data plane and sources, assembled: gateway, egress, DNS, VIPs and the VM or Kubernetes source.

The one place where `federation` meets `gateway`. Every part gets the value holders it reads at
construction and exposes the ones it produces; `tasks()` hands the long-lived work to the agent's
task group, and stopping goes in order: stop accepting, drain, close.

    mirror.mesh --> egress, east-west gateway, workers, DNS, VIP allocator, VM/Kubernetes source
    mirror.mesh's VIPs (allocated by the VIP allocator) --> DNS (VM), VM interface, egress placement
    vm.held_vips --> egress placement
    kubernetes.cluster_ips --> DNS (Kubernetes);  egress.listening --> Kubernetes derived slices
    egress.reach.avoid --> DNS (sites, or sites per service, used last);  kubernetes.eastwest_address --> site record
    traffic policy reader's policies --> egress (enforced on new connections)
    endpoint addresses (from mesh) --> DNS, VM interface, endpoint listeners; their `listening` --> Kubernetes
    vm.exports / kubernetes.exports (+ static exports) --> `exports` --> publisher
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

from prometheus_client import CollectorRegistry

import federation
from federation.agent.identity import Identity
from federation.agent.serving import merged_exports, served_addresses, served_ranges
from federation.agent.settings import AgentSettings
from federation.core.endpoints import EndpointAddresses, EndpointAllocator
from federation.core.errors import ConfigError
from federation.core.keys import Keys
from federation.core.policy.access import AccessState
from federation.core.records import Gateway, ServiceExport, Site
from federation.core.view import MeshView, VipTable
from federation.dns.server import DnsServer
from federation.pki.issuing import load_site
from federation.registry.allocator import TxnClient, VipAllocator
from federation.runtime.values import Derived, Readable, Value, follow
from federation.sources.kubernetes.policysync import PolicyWriter
from federation.sources.kubernetes.source import KubernetesSource
from federation.sources.vm.capture import EgressCapture, precondition
from federation.sources.vm.netlink import own_address
from federation.sources.vm.source import VmSource
from gateway.accesslog import AccessLog
from gateway.balancing import Placement
from gateway.eastwest import EastWestGateway
from gateway.egress import Egress
from gateway.enforcing import Policies
from gateway.headless import HostListeners
from gateway.ingress import IngressListener, IngressMetrics
from gateway.probing import Prober
from gateway.streams import set_read_size
from gateway.tls import CertificateStore
from gateway.workers import GatewayWorkers

log = logging.getLogger(__name__)

Task = tuple[str, Coroutine[Any, Any, None]]


class DataPlane:
    """Starts and stops the subsystems of one site; `start()` binds, `tasks()` runs, `drain()`/`close()` end."""

    def __init__(self, settings: AgentSettings, mesh: Readable[MeshView], metrics: CollectorRegistry,
                 vip_client: TxnClient, identity: Identity | None = None,
                 access: Readable[AccessState] | None = None, *, allocator_mesh: Readable[MeshView] | None = None,
                 config: Readable[AgentSettings] | None = None, policies: Readable[Policies] | None = None,
                 policy_writer: PolicyWriter | None = None) -> None:
        self.settings = settings
        self.config: Readable[AgentSettings] = config or Value(settings, name="agent settings")
        """The settings as reloaded (SIGHUP): the parts that can follow a change read them from here."""
        self.identity = identity
        self.access = access
        """The access policies, mesh default and revocations the gateway and the egress enforce."""
        self.mesh = mesh
        self.policies = policies
        """The traffic policies in force (the registry's policy reader): the egress enforces them."""
        self._allocator_mesh = allocator_mesh or mesh
        """What the VIP allocator reconciles against: only live views (it releases what a view lacks)."""
        self.metrics = metrics
        self.accesslog = AccessLog(settings.access_log, metrics)
        """One JSON line per relayed connection, egress and gateway (off unless `access_log.path` is set)."""
        self._vip_client = vip_client
        self._policy_writer = policy_writer
        """Writes a Kubernetes site's policy objects to the registry (agent/policysigning.py)."""
        self.vm: VmSource | None = None
        self.kubernetes: KubernetesSource | None = None
        self.certs: CertificateStore | None = None
        self.eastwest: EastWestGateway | None = None
        self.workers: GatewayWorkers | None = None
        self.egress: Egress | None = None
        self.hosts: HostListeners | None = None
        """Egress listeners of headless endpoints of other networks (one per endpoint address and port)."""
        self.endpoints: Readable[EndpointAddresses] | None = None
        """This site's address for each headless endpoint of another network (None: off, see _endpoint_table)."""
        self.ingress: list[IngressListener] = []
        """Listeners for clients outside the mesh (`ingress:`), handed to the egress."""
        self.prober: Prober | None = None
        """Probes the gateways of the sites this one imports from (`/gateways`, `meshfed gateways`)."""
        self.dns: DnsServer | None = None
        self.vips: VipAllocator | None = None
        self.capture: EgressCapture | None = None
        """A VM's egress mode and capture rules (vm.egress_capture), decided at start."""
        self._gateway: Readable[Gateway | None] = Value(None, name="advertised gateway")
        live = self.config
        self._static: Readable[tuple[ServiceExport, ...]] = Derived(lambda: live.get().exports, live,
                                                                    name="static exports")
        self._gateway_settings = Derived(lambda: live.get().gateway, live, name="gateway settings")
        self.exports: Readable[tuple[ServiceExport, ...]] = self._static
        """The site's export list, for the publisher (complete once `exports_ready()` returns)."""
        self.addresses: Readable[VipTable] = Value(MappingProxyType({}), name="ClusterSetIP addresses")
        """The address of each ClusterSetIP service as clients here reach it (for DNS)."""
        self.site_record: Readable[Site] = Derived(self._site_record, self._gateway, name="site record")
        """What the publisher writes as the site record: the gateway it advertises and the CA chain."""

    async def start(self) -> None:
        """Build and bind everything, in the order the holders need: the VM source (its interface VIPs place
        the egress listeners), the gateway and egress (so the first site record names the gateway), the
        Kubernetes source (its derived slices point at the egress listeners), then DNS."""
        s = self.settings
        self.endpoints = self._endpoint_table()
        if s.site.kind == "vm":
            ranges = (*s.dns.vip_ranges, *(s.vm.endpoint_ranges if self.endpoints is not None else ()))
            self.capture = EgressCapture(s.vm.egress_capture, ranges, where=str(s.source),
                                         unavailable=precondition(s.vm, s.dns.enabled, bool(s.gateway.ca_dir)))
            await self.capture.decide()
            self._start_vm()
        if s.gateway.ca_dir:
            await self._start_gateway()
        else:
            log.warning("gateway.ca_dir is not set: no east-west gateway and no egress for this site "
                        "(cross-network traffic is off; run `meshfed ca site` and set it)")
        if s.kubernetes.enabled:
            self._start_kubernetes()
        await self._start_ingress()
        chain = (self.certs.chain,) if self.certs is not None else ()
        self.site_record = Derived(self._site_record, self._gateway, *chain, name="site record")
        if s.dns.enabled:
            down = self.egress.reach.avoid if self.egress is not None else None
            config = self.config
            self.dns = DnsServer(s.dns, local_site=s.site.name, mesh=self.mesh, vips=self.addresses,
                                 last_resort=down, registry=self.metrics,
                                 live=Derived(lambda: config.get().dns, config, name="dns settings"),
                                 endpoints=self.endpoints)
            await self.dns.start()

    def tasks(self) -> Iterator[Task]:
        """The long-lived work, for the agent's task group (each named; each must run until cancelled)."""
        if self.certs is not None:
            yield "certificate-renewal", self.certs.run()
            yield "trust-bundle", self.certs.follow_trust()
        if self.eastwest is not None:
            yield "gateway-tunnels", self.eastwest.run()
        if self.workers is not None:
            yield "gateway-workers", self.workers.run()
        if self.egress is not None:
            yield "egress", self.egress.run()
            yield "egress-authorization", self.egress.enforce()
        if self.prober is not None:
            yield "gateway-probes", self.prober.run()
        if self.hosts is not None:
            yield "egress-endpoints", self.hosts.run()
        if self.dns is not None:
            yield "dns-server", self.dns.run()
        if self.vips is not None:
            yield "vip-allocator", self.vips.run()
        if self.vm is not None:
            yield "vm-source", self.vm.run()
        if self.kubernetes is not None:
            yield "kubernetes-source", self.kubernetes.run()
        if self.eastwest is not None:
            yield "gateway-read-size", self._follow_read_size()

    async def _follow_read_size(self) -> None:
        """The process's read buffer follows `gateway.read_size` (a reload)."""
        async for _ in follow(self._gateway_settings):
            set_read_size(self._gateway_settings.get().read_size)

    async def exports_ready(self) -> None:
        """Wait until the site's export list is complete (first checks done, caches listed).

        The publisher starts only then: started with a partial list it would delete the site's other
        records of the previous run, and re-added records would lose their export time (MCS age).
        """
        if self.vm is not None:
            await self.vm.ready.wait()
        if self.kubernetes is not None:
            await self.kubernetes.synced.wait()

    async def drain(self, grace: float) -> None:
        """Stop accepting new connections; let relayed streams finish for up to `grace` seconds."""
        for listener in self.ingress:
            listener.close()
        for part in (self.egress, self.hosts):
            if part is not None:
                part.stop_accepting()
        if self.eastwest is not None:
            await self.eastwest.stop_accepting()
        waits = [part.active.wait_idle(grace) for part in (self.egress, self.eastwest) if part is not None]
        if self.workers is not None:
            waits.append(self.workers.close(grace))
        if waits:
            active = sum(p.active.count for p in (self.egress, self.eastwest) if p is not None)
            if active:
                log.info("draining %d relayed stream(s) for up to %.0fs", active, grace)
            await asyncio.gather(*waits)

    async def close(self) -> None:
        """Close what is left: tunnels, streams, DNS, worker processes, the certificate directory."""
        for listener in self.ingress:
            listener.close()
            await listener.wait_closed()
        for part in (self.hosts, self.egress, self.eastwest, self.workers):
            if part is not None:
                await part.close()
        if self.capture is not None:
            await self.capture.close()
        if self.dns is not None:
            await self.dns.close()
        if self.certs is not None:
            self.certs.close()

    # -- private

    def _start_vm(self) -> None:
        s = self.settings
        serving = self._vips_here() or s.dns.answer_unserved_vips
        if s.dns.enabled and serving:
            # It plans from live views only: it releases what a view lacks, so never from a restored one. It
            # allocates the families this site serves (IPv6 only where capture listens on it), so no VIP is
            # allocated that no site serves.
            ident = self.identity
            verifier = ident.verifier if ident is not None else None
            self.vips = VipAllocator(self._vip_client, Keys(s.registry.prefix), self._allocator_mesh,
                                     ranges=served_ranges(s.dns.vip_ranges, self.capture), grace=s.dns.vip_grace,
                                     seal=ident.signing.seal if ident is not None and ident.signing else None,
                                     resign=(lambda kid: verifier.resign_due(kid, s.site.name)) if verifier
                                     else (lambda kid: False), signer_site=verifier.signer_site if verifier else None)
        # DNS answers, the VIP interface and the egress use the same addresses: the ones the egress can serve
        # (a listener binds one address per service port; the capture listener takes IPv6 VIPs too).
        # Read from the view, so they change with it. With VIPs off nothing here binds them, and a client
        # that got one would leave by the default route to whatever answers there: answer none.
        if serving:
            self.addresses = served_addresses(self.mesh, self.capture)
        elif s.dns.enabled:
            log.warning("vm.vip_interface is empty: ClusterSetIP names answer no address at this site (nothing "
                        "here serves the VIPs); clients use the egress listeners `meshfed status` lists")
        config = self.config
        self.vm = VmSource(s.vm, s.site.name, mesh=self.mesh, vips=self.addresses, static_exports=self._static,
                           locality=s.site.locality, metrics=self.metrics,
                           live=Derived(lambda: config.get().vm, config, name="vm settings"),
                           vip_ranges=self.capture.captured if self.capture else (), endpoints=self.endpoints)
        self.exports = self.vm.exports

    async def _start_ingress(self) -> None:
        # Registered on every site (no samples until a listener has clients), so dashboards and alerts do not
        # depend on which sites host ingress.
        self.ingress_metrics = IngressMetrics(self.metrics)
        if not self.settings.ingress or self.egress is None:
            return  # settings.validate refuses ingress without gateway.ca_dir, so without an egress
        metrics = self.ingress_metrics
        for item in self.settings.ingress:
            listener = IngressListener(item, self.mesh, self.egress.admit, metrics)
            await listener.start()
            self.ingress.append(listener)

    def _start_kubernetes(self) -> None:
        s = self.settings
        self.kubernetes = KubernetesSource(
            s.kubernetes, s.site.name, mesh=self.mesh, listeners=self.egress.listening if self.egress else None,
            locality=s.site.locality, metrics=self.metrics, endpoints=self.endpoints,
            endpoint_listeners=self.hosts.listening if self.hosts else None, policies=self._policy_writer,
        )  # fmt: skip
        static, kube = self._static, self.kubernetes.exports
        self.exports = Derived(lambda: merged_exports(static.get(), kube.get()), static, kube, name="exports")
        self.addresses = self.kubernetes.cluster_ips
        if self._gateway.get() is None and self.eastwest is not None and not s.site.gateway_address:
            log.info("gateway address not configured: waiting for the east-west LoadBalancer's ingress address")
            lb, name, port = self.kubernetes.eastwest_address, s.gateway.name, self.eastwest.address[1]
            self._gateway = Derived(lambda: Gateway(name, lb.get() or "", port) if lb.get() else None, lb,
                                    name="advertised gateway")

    def _site_record(self) -> Site:
        s = self.settings.site
        gateway = self._gateway.get()
        return Site(
            name=s.name, network=s.network, locality=s.locality, kind=s.kind,
            gateways=(gateway,) if gateway is not None else (),
            ca_chain=self.certs.ca_chain_pem if self.certs is not None else "",
            agent_version=federation.__version__,
        )  # fmt: skip

    async def _start_gateway(self) -> None:
        s = self.settings
        gw = s.gateway
        identity = self.identity
        try:
            known = identity.site_ca if identity is not None else None
            site_ca = known if known is not None else await asyncio.to_thread(load_site, Path(gw.ca_dir))
        except Exception as exc:
            raise ConfigError(f"{s.source}: gateway.ca_dir: {exc}") from None
        cert_dir = Path(gw.cert_dir) if gw.cert_dir else s.state_dir / "gateway"
        self.certs = CertificateStore(site_ca, gw.name, cert_dir, lifetime=dt.timedelta(seconds=gw.cert_lifetime),
                                      trust=identity.trust if identity is not None else None)
        if self.certs.site != s.site.name:
            raise ConfigError(f"{s.source}: gateway.ca_dir: the CA in {gw.ca_dir} belongs to site "
                              f"{self.certs.site!r}, not {s.site.name!r}")
        set_read_size(gw.read_size)
        self.eastwest = EastWestGateway(s.site.name, self.mesh, self.certs.server, self.certs.trust,
                                        self._gateway_settings, self.metrics, access=self.access,
                                        accesslog=self.accesslog)
        await self.eastwest.start()
        host, port = self.eastwest.address
        if gw.workers > 1:
            # More processes on the same port (SO_REUSEPORT), fed each registry view and renewed certificate.
            c = self.certs
            self.workers = GatewayWorkers(s.site.name, gw, c.chain_file, c.key_file, c.bundle_file, gw.workers - 1,
                                          self.mesh, c.changed, self.access)
            await self.workers.start(port)
        capture = self.capture.bind if self.capture is not None and self.capture.active else None
        self.egress = Egress(s.site.name, self.mesh, self.certs.client, self.certs.trust, self._gateway_settings,
                             self.metrics, placement=self._placement(), local_services=self._vips_here(),
                             capture=capture, access=self.access, policies=self.policies, accesslog=self.accesslog,
                             headless_captured=capture is not None and self.endpoints is not None)
        await self.egress.start()
        self.prober = Prober(s.site.name, self.mesh, self.certs.client, self.certs.trust, self._gateway_settings,
                             self.metrics, pools=self.egress.pools, reach=self.egress.reach, policies=self.policies)
        if self.endpoints is not None:
            self.hosts = HostListeners(self.egress, self.endpoints, self.capture.captured if self.capture else ())
            await self.hosts.start()
        if self.capture is not None and self.egress.capture is not None:
            await self.capture.install(self.egress.capture.address[1])
        advertised = s.site.gateway_address or host
        if ipaddress.ip_address(host).is_unspecified and not s.site.gateway_address:
            if s.kubernetes.enabled:
                return  # the east-west LoadBalancer's address, once known (see _start_kubernetes)
            if s.site.kind != "vm":
                raise ConfigError(f"{s.source}: site.gateway_address: the gateway listens on {host}; "
                                  "say which address other networks reach it at")
            # A VM's gateway is reached at the VM's own address, as an operator would expect.
            vm_address = s.vm.address
            advertised = vm_address if vm_address != "auto" else await own_address()
            log.info("gateway advertised at this VM's address %s (set site.gateway_address to change it)", advertised)
        self._gateway = Value(Gateway(gw.name, advertised, port), name="advertised gateway")

    def _endpoint_table(self) -> Readable[EndpointAddresses] | None:
        """Addresses for headless endpoints of other networks, where this site can serve them: a VM with a VIP
        interface (`vm.endpoint_ranges`) or a Kubernetes site given a static band (`kubernetes.endpoint_ranges`),
        with an egress. Allocated here from the view, nothing written anywhere (docs/architecture.md)."""
        s = self.settings
        if not s.gateway.ca_dir:
            return None
        ranges = s.kubernetes.endpoint_ranges if s.kubernetes.enabled else s.vm.endpoint_ranges if (
            self._vips_here()) else ()
        if not ranges:
            return None
        book, mesh = EndpointAllocator(ranges, s.site.name, s.site.network), self.mesh
        return Derived(lambda: book.update(mesh.get()), mesh, name="endpoint addresses")

    def _vips_here(self) -> bool:
        return self.settings.site.kind == "vm" and bool(self.settings.vm.vip_interface)

    def _placement(self) -> Readable[Placement]:
        """VM sites listen on VIP:port once the interface holds the VIP (applications use the DNS name
        unchanged); others, and VMs without VIPs, on loopback ports."""
        gw = self.settings.gateway
        fallback = (gw.egress_address, gw.egress_port)
        if self.vm is None or self.vips is None or not self._vips_here():
            return Value(Placement(fallback=fallback), name="placement")
        table, held = self.addresses, self.vm.held_vips
        return Derived(lambda: Placement(fallback, table.get(), held.get()), table, held, name="placement")
