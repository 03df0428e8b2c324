"""The agent's composition root: registry sync, data plane, sources, DNS and admin in one TaskGroup.

Every long-lived task is named and guarded (its death is logged and ends the agent). A stop signal
only sets an event; one task turns it into an orderly stop: stop accepting, drain relayed streams
for `gateway.drain_timeout`, then let the group cancel the rest, and close what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from federation.agent.admin import AdminServer
from federation.agent.dataplane import DataPlane
from federation.agent.explaining import explain_document
from federation.agent.gateways import gateways_document, status_warnings
from federation.agent.identity import Identity
from federation.agent.policysigning import kubernetes_policies
from federation.agent.reloading import Reloader
from federation.agent.reporting import registry_report
from federation.agent.selection import EVERYTHING, Selection
from federation.agent.settings import ADMIN_ADDR_FILE, AgentSettings
from federation.agent.status import agent_status
from federation.agent.topology import topology
from federation.agent.verifying import verify_document
from federation.agent.workloads import wire_workloads
from federation.core.imports import EVERYTHING as IMPORT_EVERYTHING
from federation.core.imports import import_filter
from federation.core.keys import Keys
from federation.core.verification import Mode
from federation.core.view import MeshView
from federation.pki.issuing import Authority
from federation.registry.access import AccessReader
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.heartbeat import HeartbeatWriter, LagMeter
from federation.registry.link import Links
from federation.registry.mirror import Mirror, RegistryMetrics
from federation.registry.policies import PolicyMetrics, PolicyReader
from federation.registry.publisher import Publisher
from federation.registry.snapshot import RawListing, SnapshotFile
from federation.runtime.files import write_private
from federation.runtime.limits import OpenFilesWatch, raise_open_files
from federation.runtime.tasks import after, guard
from federation.runtime.values import Derived, Value

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "registry.snapshot"
"""The last registry view, in the state directory (federation.registry.snapshot)."""

CA_SWITCH_GRACE = 1.0
"""Seconds between etcd holding the site record with a new intermediate and the gateway presenting leaves
from it: peers' watches deliver in milliseconds; a second covers a loaded machine."""


class _Shutdown(Exception):
    """Raised inside the task group to end it in order."""


class Agent:
    """One site's agent: publishes the site's exports, mirrors the mesh, serves DNS and the gateways."""

    def __init__(self, settings: AgentSettings, reload: Callable[[], AgentSettings] | None = None) -> None:
        self.settings = settings
        """The settings the agent started with (what runs for those that need a restart)."""
        self.config: Value[AgentSettings] = Value(settings, name="agent settings")
        """The settings as reloaded: the parts that follow a change read them here (federation.agent.reload)."""
        self.keys = Keys(settings.registry.prefix)
        self.metrics = CollectorRegistry()
        self.reloader = Reloader(self.config, reload, self.metrics)
        """SIGHUP: `request_reload()`."""
        self.files = files = OpenFilesWatch()
        Gauge("meshfed_open_files", "File descriptors the agent holds (counted every 2 s)", registry=self.metrics,
              ).set_function(lambda: files.used)
        Gauge("meshfed_open_files_limit", "The agent's open-files (soft) limit", registry=self.metrics,
              ).set_function(lambda: files.limit)
        self.etcd: EtcdProcess | None = None
        self.mirror: Mirror | None = None
        self.publisher: Publisher | None = None
        self.plane: DataPlane | None = None
        self.identity: Identity | None = None
        self.access: AccessReader | None = None
        self.traffic: PolicyReader | None = None
        """The traffic policies in force, live from the registry (the egress enforces them)."""
        self.admin_address: tuple[str, int] | None = None
        self.lag = LagMeter(self.metrics)
        """How far behind this agent sees each site (the heartbeats its watch delivers)."""
        self.links = Links()
        """Every registry client's link to etcd (readiness detail, status, metrics)."""
        self.links.register(self.metrics)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; a subsystem that fails ends the agent with its error."""
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        before, after = raise_open_files()
        if after > before:
            log.info("open-files limit raised from %d to %d (the hard limit)", before, after)
        elif after < 4096:
            log.warning("open-files limit is %d and cannot be raised (hard limit): a large mesh needs more; "
                        "raise LimitNOFILE= in the unit or ulimit -n", after)
        self.files.install(asyncio.get_running_loop())
        endpoints = s.registry.endpoints
        if not endpoints:
            self.etcd = EtcdProcess(data_dir=s.state_dir / "etcd")
            await asyncio.to_thread(self.etcd.start)
            endpoints = (self.etcd.endpoint,)
            log.info("no registry.endpoints configured: started embedded etcd at %s", self.etcd.endpoint)
        try:
            await self._run(endpoints, stop)
        finally:
            if self.etcd is not None:
                await asyncio.to_thread(self.etcd.stop)
                log.info("embedded etcd stopped")

    def status(self, selection: Selection = EVERYTHING) -> dict[str, Any]:
        """What `meshfed status` prints (the admin endpoint's /status)."""
        out = agent_status(self.settings, self.mirror, self.publisher, self.plane,
                           self.etcd.endpoint if self.etcd is not None else None, self.links,
                           self.reloader.describe(), self.identity, selection)
        sites = self.keys.sites()
        out["warnings"] = status_warnings(
            self.plane.prober if self.plane is not None else None,
            self.mirror.catalog.rejected if self.mirror is not None else {},
            lambda k: k.startswith(sites) and "/" not in k[len(sites):], (self.files.used, self.files.limit))
        if self.mirror is not None:
            self.lag.prune(self.mirror.mesh.get().sites)
        lag = self.lag.report()
        out["registry"]["lag"] = {k: v for k, v in lag.items() if selection.site in (None, k)}
        if self.mirror is not None:
            egress = self.plane.egress if self.plane is not None else None
            out["topology"] = topology(self.mirror.mesh.get(), self.settings.site.name,
                                       egress.unreachable.get() if egress is not None else frozenset(), lag, selection)
        return out

    async def _run(self, endpoints: tuple[str, ...], stop: asyncio.Event) -> None:
        s = self.settings

        def client(name: str) -> EtcdClient:
            c = EtcdClient(endpoints, tls=s.registry.tls, timeout=s.registry.timeout, name=name)
            self.links.add(c.link)
            return c

        identity = self.identity = await Identity.load(s)
        verifier = identity.verifier
        raw = RawListing(s.registry.snapshot_max_bytes) if s.registry.snapshot else None
        mirror = self.mirror = Mirror(client("mirror"), self.keys, metrics=RegistryMetrics(self.metrics),
                                      trust=verifier, raw=raw, imports=import_filter(s.imports, s.site.name),
                                      lag=self.lag.take)
        if s.imports != IMPORT_EVERYTHING:
            log.info("imports scoped to %s: other services are left out of the mirror", ", ".join(s.imports))
        snapshot = SnapshotFile(s.state_dir / SNAPSHOT_FILE, self.keys.root(), raw) if raw is not None else None
        saved = snapshot.load() if snapshot is not None else None
        if saved is not None:
            mirror.restore(saved)
        access = self.access = AccessReader(
            client("access-policies"), self.keys, revocations=verifier.revocations if verifier is not None else None,
            verify=verifier.mesh_policy if verifier is not None else None,
            protect_deletes=s.registry.signatures is Mode.REQUIRE,
        )  # fmt: skip
        # Deletes are not protected: traffic policies have no signed tombstone, and a deleted one leaves the
        # service routed as without policies (an attacker gains nothing an access policy would have refused).
        traffic = self.traffic = PolicyReader(
            client("traffic-policies"), self.keys, verify=verifier.mesh_policy if verifier is not None else None)
        self.metrics.register(PolicyMetrics(traffic))
        # What may delete or release (VIP allocation) waits for a live listing, never acts on a restored one.
        before = MeshView.before_sync()
        live = Derived(lambda: mirror.mesh.get() if mirror.live.get() else before, mirror.mesh, mirror.live,
                       name="live mesh view")
        plane = self.plane = DataPlane(s, mirror.mesh, self.metrics, client("vip-allocator"), identity, access.state,
                                       allocator_mesh=live, config=self.config, policies=traffic.policies,
                                       policy_writer=kubernetes_policies(s, lambda: client("policy-sync"), verifier))
        admin = AdminServer(s.admin.address, s.admin.port, self.metrics)
        try:
            await plane.start()
            if plane.egress is not None:  # partition behaviour: how old the view the egress routes on is
                plane.egress.partition.staleness = mirror.staleness
                plane.egress.partition.site_staleness = self.lag.stale_for
            await wire_workloads(plane)
            publisher = self.publisher = Publisher(
                client("publisher"), self.keys, plane.site_record, plane.exports,
                ttl=s.registry.lease_ttl, lease_file=s.state_dir / "lease",
                sealer=identity.signing.seal if identity.signing is not None else None,
                owner=identity.owner, on_duplicate=s.registry.on_duplicate, site_fields=identity.site_fields,
                chunk_size=s.registry.endpoint_chunk_size,
            )  # fmt: skip
            identity.on_new_ca.append(lambda ca: self._switch_site_ca(ca, plane, publisher))
            admin.add_readiness("registry", lambda: None if mirror.mesh.get().complete
                                else "initial registry sync pending")
            admin.add_readiness("publisher", lambda: (
                f"site held by another agent ({publisher.held_by})" if publisher.held_by is not None
                else None if publisher.published.is_set() or mirror.restored_at else "site not yet published"))
            admin.add_degraded("registry", lambda: _registry_degraded(mirror, self.links))
            admin.add_degraded("publisher", lambda: None if publisher.published.is_set()
                               else "site not yet published (etcd unreachable)")
            admin.add_document("/registry", lambda selection: registry_report(
                mirror.mesh.get(), mirror.catalog.rejected, source=f"agent of site {s.site.name}",
                stale=mirror.stale, staleness=mirror.staleness(), error=mirror.error,
                revoked=verifier.revocations.get().sites if verifier is not None else None, selection=selection,
            ))  # fmt: skip
            admin.add_document("/status", self.status)
            admin.add_document("/gateways", lambda selection: gateways_document(
                s.site.name, plane.prober, selection, self.config.get().gateway.probe_interval))
            admin.add_document("/verify", lambda selection: verify_document(
                s.site.name, mirror, self.keys, plane, identity, self.files, selection))
            admin.add_query_document("/explain", lambda query: explain_document(
                s.site.name, s.dns.zone, mirror.mesh.get(), plane, query))
            self.admin_address = await admin.start()
            write_private(s.state_dir / ADMIN_ADDR_FILE, "{}:{}\n".format(*self.admin_address).encode())
            async with asyncio.TaskGroup() as tg:
                def spawn(name: str, work: Any) -> None:
                    tg.create_task(guard(name, work), name=name)

                spawn("config-reload", self.reloader.run())
                spawn("registry-mirror", mirror.run())
                if snapshot is not None:
                    spawn("registry-snapshot", snapshot.run())
                spawn("open-files", self.files.run())
                spawn("access-policies", access.run())
                spawn("traffic-policies", traffic.run())
                spawn("registry-publisher", after(plane.exports_ready(), publisher.run()))
                if s.registry.heartbeat_interval:
                    spawn("registry-heartbeat", HeartbeatWriter(
                        client("heartbeat"), self.keys, s.site.name, s.registry.heartbeat_interval,
                        lease=lambda: publisher.lease if publisher.published.is_set() and publisher.held_by is None
                        else 0, sealer=identity.signing.seal if identity.signing is not None else None).run())
                for name, work in plane.tasks():
                    spawn(name, work)
                if plane.accesslog.enabled:
                    spawn("access-log", plane.accesslog.run())
                for name, work in identity.tasks():
                    spawn(name, work)
                tg.create_task(self._stop_on(stop, plane), name="stop")
        except* _Shutdown:
            log.info("agent for site %s stopped", s.site.name)
        finally:
            await admin.close()
            await plane.close()
            with contextlib.suppress(FileNotFoundError):
                (s.state_dir / ADMIN_ADDR_FILE).unlink()

    def request_reload(self) -> None:
        """SIGHUP: read the settings again (what can change live applies now), and gateway.ca_dir."""
        self.reloader.request()
        if self.identity is not None:
            self.identity.reload.set()

    async def _switch_site_ca(self, site_ca: Authority, plane: DataPlane, publisher: Publisher) -> None:
        """A new site intermediate: list it in the site record first, and issue leaves from it only once
        etcd holds that record and peers have had a moment to see it, so no handshake meets a leaf its
        peer cannot verify yet."""
        signing = self.identity.signing if self.identity is not None else None
        if plane.certs is not None:
            plane.certs.stage_site_ca(site_ca)  # first: readers verify the new signer through this chain
        if signing is not None:
            signing.reissue(site_ca)
        if plane.certs is None:
            return
        try:
            async with asyncio.timeout(self.settings.registry.timeout * 4):
                await publisher.settled.wait()
        except TimeoutError:
            log.warning("site record with the new CA not yet written; switching the gateway certificate anyway")
        await asyncio.sleep(CA_SWITCH_GRACE)
        issued = plane.certs.switch_site_ca()
        log.info("gateway certificate now issued by the new site CA, valid until %s", issued.cert.not_valid_after_utc)

    async def _stop_on(self, stop: asyncio.Event, plane: DataPlane) -> None:
        """The orderly stop: stop accepting, drain relayed streams, then end the task group."""
        await stop.wait()
        grace = self.config.get().gateway.drain_timeout
        log.info("stopping: no new connections; draining relayed streams for up to %.0fs", grace)
        await plane.drain(grace)
        raise _Shutdown


def _registry_degraded(mirror: Mirror, links: Links) -> str | None:
    """Why the registry part serves in a degraded way (a stale view, a client that cannot reach etcd)."""
    notes = []
    if mirror.stale and mirror.mesh.get().complete:
        age = mirror.staleness()
        source = "a view restored from disk" if not mirror.live.get() else "its last known state"
        notes.append(f"serving {source}, {age:.0f}s old ({mirror.error or 'etcd unreachable'})")
    for link in links.unreachable():
        notes.append(f"{link.name} cannot reach etcd for {link.down_for():.0f}s ({link.error})")
    return "; ".join(notes) or None
