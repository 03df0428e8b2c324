"""The Kubernetes source: exports from ServiceExports into the registry, imports from the mesh view into the cluster.

Shell around the pure cores in conversion.py and importing.py: four reflectors keep caches of
Services, EndpointSlices, ServiceExports and ServiceImports; one reconcile task turns them (and the
latest mesh view) into exports, ServiceExport status and writes of owned objects.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from federation.core.backoff import Backoff
from federation.core.endpoints import EndpointAddresses
from federation.core.ratelimit import LogLimiter
from federation.core.records import Locality, ServiceExport
from federation.core.view import MeshView, PortId, VipTable
from federation.core.workloads import Workloads
from federation.runtime.values import Readable, Value, follow
from federation.sources.kubernetes.client import ApiError, ApiUnavailable, KubeClient
from federation.sources.kubernetes.conversion import (
    NOWHERE,
    Conversion,
    MeshState,
    ObjKey,
    convert_all,
    export_conditions,
    is_owned,
    key_of,
    same_conditions,
)
from federation.sources.kubernetes.importing import (
    RESOURCES,
    Create,
    Delete,
    Inputs,
    Op,
    Owned,
    Patch,
)
from federation.sources.kubernetes.policysync import PolicySync, PolicyWriter
from federation.sources.kubernetes.replanning import ImportPlanner
from federation.sources.kubernetes.settings import KubernetesSettings
from federation.sources.kubernetes.watching import Reflector, WatchMetrics
from federation.sources.kubernetes.workloads import pod_kept, workloads_of

log = logging.getLogger(__name__)

WATCHED = ("services", "endpointslices", "serviceexports", "serviceimports", "pods")


class SourceMetrics:
    """What the Kubernetes source did, for /metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.watch = WatchMetrics(registry)
        self.exports = Gauge("meshfed_kubernetes_exports", "Services exported from this cluster", registry=registry)
        self.invalid = Gauge(
            "meshfed_kubernetes_invalid_exports", "ServiceExports that cannot be exported", registry=registry
        )
        self.imports = Gauge("meshfed_kubernetes_imports", "ServiceImports the agent owns", registry=registry)
        self.writes = Counter(
            "meshfed_kubernetes_writes", "Writes to the API server, by resource and verb", ["resource", "verb"],
            registry=registry,
        )  # fmt: skip
        self.write_errors = Counter(
            "meshfed_kubernetes_write_errors", "Failed writes to the API server, by resource and verb",
            ["resource", "verb"], registry=registry,
        )  # fmt: skip


class KubernetesSource:
    """Exports this cluster's ServiceExports and imports the mesh's services as native objects."""

    def __init__(
        self,
        settings: KubernetesSettings,
        site: str,
        *,
        mesh: Readable[MeshView] | None = None,
        listeners: Readable[Mapping[PortId, tuple[str, int]]] | None = None,
        endpoints: Readable[EndpointAddresses] | None = None,
        endpoint_listeners: Readable[Mapping[tuple[str, str, str, str, str], tuple[str, int]]] | None = None,
        locality: Locality = NOWHERE,
        metrics: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        client: KubeClient | None = None,
        policies: PolicyWriter | None = None,
    ) -> None:
        self.settings = settings
        self.site = site
        self.synced = asyncio.Event()
        """Set once every cache has listed and the first exports were handed over."""
        self.imports_synced = asyncio.Event()
        """Set once the owned objects match a mesh view for the first time."""
        self._mesh = mesh
        self._listeners = listeners
        self._endpoints = endpoints
        """This site's addresses for headless endpoints of other networks: per-endpoint Services (None: off)."""
        self._endpoint_listeners = endpoint_listeners
        self.exports: Value[tuple[ServiceExport, ...]] = Value((), name="kubernetes exports")
        """What the cluster's ServiceExports export, once every cache has listed (`synced`)."""
        self.cluster_ips: Value[VipTable] = Value(MappingProxyType({}), name="derived ClusterIPs")
        """The ClusterIP of each derived Service: the ClusterSetIP address pods here can route."""
        self.workloads: Value[Workloads] = Value(Workloads(), name="kubernetes workloads")
        """Pod IP -> `namespace/serviceAccount` (the egress names it in its clients' streams), once pods listed."""
        self._pods_changed = True
        self.eastwest_address: Value[str | None] = Value(None, name="east-west LoadBalancer address")
        """The east-west LoadBalancer's first ingress address, once the cloud has assigned one."""
        self._locality = locality
        self._metrics = SourceMetrics(metrics or CollectorRegistry())
        self._clock = clock
        self._client = client
        self._policies = policies
        """Writes the cluster's TrafficPolicy and AccessPolicy objects to the registry (None: not synced)."""
        self.policy_sync: PolicySync | None = None
        self._owned = (settings.owned_label, settings.owned_value)
        self._wake = asyncio.Event()
        self._reflectors: dict[str, Reflector] = {}
        self._published: list[ServiceExport] | None = None
        self._limiter = LogLimiter()
        self._planner = ImportPlanner()
        """The import plan's index: a pass computes only the services that changed (issue 11)."""
        self._refused: dict[tuple[str, ObjKey], float] = {}
        """Writes the API server refused (4xx), with when: not retried before backoff_cap has passed."""

    @property
    def stores(self) -> dict[str, dict[ObjKey, dict[str, Any]]]:
        """The cached objects per resource (for the admin endpoint and tests)."""
        return {r: x.store for r, x in self._reflectors.items()}

    def _eastwest_address(self) -> str | None:
        """The east-west LoadBalancer's first ingress IP (or hostname), once the cloud has assigned one."""
        svc = self.stores.get("services", {}).get((self.settings.namespace, self.settings.eastwest_service))
        ingress = ((((svc or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
        for item in ingress if isinstance(ingress, list) else []:
            if isinstance(item, dict):
                address = item.get("ip") or item.get("hostname")
                if isinstance(address, str) and address:
                    return address
        return None

    async def run(self) -> None:
        """Watch and reconcile until cancelled."""
        client = self._client or await KubeClient.connect(self.settings)  # a bad config ends the agent at start
        try:
            self._reflectors = {
                r: Reflector(
                    client, r, self._on_pods if r == "pods" else self._wake.set, metrics=self._metrics.watch,
                    backoff=self._backoff(), watch_timeout=self.settings.watch_timeout,
                    keep=pod_kept if r == "pods" else None,
                    on_key=functools.partial(self._planner.touch, r) if r in RESOURCES else None,
                )
                for r in WATCHED
            }
            async with asyncio.TaskGroup() as tg:
                for r, reflector in self._reflectors.items():
                    tg.create_task(reflector.run(), name=f"kubernetes-watch-{r}")
                tg.create_task(self._reconcile_loop(client), name="kubernetes-reconcile")
                if self._policies is not None:
                    self.policy_sync = PolicySync(client, self._policies, self.settings, metrics=self._metrics.watch)
                    tg.create_task(self.policy_sync.run(), name="kubernetes-policies")
                held = [h for h in (self._mesh, self._listeners, self._endpoints, self._endpoint_listeners)
                        if h is not None]
                if held:
                    tg.create_task(self._follow(held), name="kubernetes-follow-mesh")
        finally:
            if self._client is None:
                await asyncio.shield(client.close())

    # ------------------------------------------------------------ internals

    def _on_pods(self) -> None:
        self._pods_changed = True
        self._wake.set()

    async def _follow(self, held: list[Readable[Any]]) -> None:
        """A new mesh view or egress listener: rewrite imports and conflict status to match."""
        async for _ in follow(*held):
            self._wake.set()

    def _view(self) -> MeshView | None:
        view = self._mesh.get() if self._mesh is not None else None
        return view if view is not None and view.complete else None

    def _backoff(self) -> Backoff:
        return Backoff(base=self.settings.backoff_base, cap=self.settings.backoff_cap)

    async def _reconcile_loop(self, client: KubeClient) -> None:
        # Nothing is published, written or deleted before every cache has its first list (HasSynced).
        await asyncio.gather(*(r.synced.wait() for r in self._reflectors.values()))
        log.info("kubernetes: caches synced for site %s", self.site)
        retry = self._backoff()
        while True:
            failed = await self._reconcile(client)
            if failed:
                delay = retry.next()
                await asyncio.sleep(delay)
                continue
            retry.reset()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives
            # as the event is set (gh-86296), which would leave this task running after its group is cancelled.
            try:
                async with asyncio.timeout(self.settings.resync):
                    await self._wake.wait()
            except TimeoutError:
                self._planner.reset()  # the periodic resync plans every service again
            self._wake.clear()
            await asyncio.sleep(self.settings.reconcile_delay)  # batch a burst of events

    async def _reconcile(self, client: KubeClient) -> bool:
        """One pass; True if some write failed and the pass should be retried."""
        s = self.stores
        if self._pods_changed:  # batched with the rest of the pass: one index per burst of pod events
            self._pods_changed = False
            self.workloads.set(workloads_of(s["pods"].values()))
        conversion = convert_all(
            s["services"].values(), s["endpointslices"].values(), s["serviceexports"].values(),
            self.site, self._locality, self._owned, s["pods"].values(),
        )  # fmt: skip
        self._publish(conversion)
        failed = await self._write_status(client, conversion)
        view = self._view()
        own = view.sites.get(self.site) if view is not None else None
        if view is None or own is None:
            self._publish_addresses()
            return failed
        existing = Owned(s["services"], s["serviceimports"], s["endpointslices"])
        inputs = Inputs(view, own, existing, self._egress, self._owned,
                        self._endpoints.get() if self._endpoints is not None else None, self._egress_endpoint)
        ops = self._planner.plan(inputs, self._listeners.get() if self._listeners is not None else {},
                                 self._endpoint_listeners.get() if self._endpoint_listeners is not None else {})
        unavailable, wrote = await self._apply(client, ops)
        if wrote and not unavailable:
            self._wake.set()  # writes change what the plan sees (a new Service's cluster IP): plan again
        failed = failed or unavailable
        if self._planner.imports_changed:  # a count of every ServiceImport only when one came, went or changed
            self._planner.imports_changed = False
            self._metrics.imports.set(sum(1 for o in s["serviceimports"].values() if is_owned(o, self._owned)))
        self._publish_addresses()
        if not failed:
            self.imports_synced.set()
        return failed

    def _publish_addresses(self) -> None:
        ips = self._planner.cluster_ips(self.stores.get("services", {}), self._owned)
        if ips is not None:
            self.cluster_ips.set(MappingProxyType({k: (ip,) for k, ip in ips.items()}))
        if self.eastwest_address.set(self._eastwest_address()) and self.eastwest_address.get():
            log.info("kubernetes: the east-west LoadBalancer's address is %s", self.eastwest_address.get())

    def _publish(self, conversion: Conversion) -> None:
        self._metrics.exports.set(len(conversion.exports))
        self._metrics.invalid.set(len(conversion.invalid))
        if conversion.exports != self._published:
            self._published = list(conversion.exports)
            log.info("kubernetes: %d service(s) exported from site %s", len(conversion.exports), self.site)
            self.exports.set(tuple(conversion.exports))
        self.synced.set()

    async def _write_status(self, client: KubeClient, conversion: Conversion) -> bool:
        view = self._view()
        services = view.services() if view is not None else {}
        for k, se in list(self.stores["serviceexports"].items()):
            fs = services.get(k)
            mesh = MeshState(synced=view is not None, exported=view is not None and (self.site, *k) in view.exports,
                             conflict=fs.conflict_of(self.site) if fs else None)
            status = se.get("status") or {}
            previous = status.get("conditions") or []
            generation = (se.get("metadata") or {}).get("generation")
            generation = generation if isinstance(generation, int) and generation >= 0 else 0
            want = export_conditions(previous, conversion.invalid.get(k), mesh, self._clock(), generation)
            if same_conditions(previous, want):
                continue
            try:
                updated = await client.patch("serviceexports", k[0], k[1], {"status": {"conditions": want}}, "status")
            except ApiUnavailable as exc:
                self._write_failed("serviceexports/status", "patch", k, exc)
                return True
            except ApiError as exc:  # refused (gone, forbidden): retrying at once would not help
                self._write_failed("serviceexports/status", "patch", k, exc)
                continue
            self._metrics.writes.labels("serviceexports/status", "patch").inc()
            self._reflectors["serviceexports"].apply(updated)
        return False

    async def _apply(self, client: KubeClient, ops: list[Op]) -> tuple[bool, int]:
        """Write the ops in order: (the API server was unreachable, so retry the pass later; writes done)."""
        wrote = 0
        now = time.monotonic()
        for op in ops:
            verb = {Create: "create", Patch: "patch", Delete: "delete"}[type(op)]
            resource = f"{op.resource}/{op.subresource}" if isinstance(op, Patch) and op.subresource else op.resource
            reflector = self._reflectors[op.resource]
            refused_at = self._refused.get((resource, _op_key(op)))
            if refused_at is not None and now - refused_at < self.settings.backoff_cap:
                self._planner.touch(op.resource, _op_key(op))  # looked at again by the next pass
                continue
            try:
                if isinstance(op, Create):
                    reflector.apply(await client.create(op.resource, op.obj))
                    k = key_of(op.obj)
                elif isinstance(op, Patch):
                    k = (op.namespace, op.name)
                    reflector.apply(await client.patch(op.resource, op.namespace, op.name, op.body, op.subresource))
                else:
                    k = (op.namespace, op.name)
                    try:
                        await client.delete(op.resource, op.namespace, op.name)
                    except ApiError as exc:
                        if exc.code != 404:
                            raise
                    reflector.apply({"metadata": {"namespace": k[0], "name": k[1]}}, deleted=True)
            except ApiUnavailable as exc:
                self._write_failed(resource, verb, _op_key(op), exc)
                self._planner.reset()
                return True, wrote  # the server is away: stop this pass, retry all of it later
            except ApiError as exc:
                # Refused: a missing namespace, a foreign object of the same name, the admission policy.
                # Retried at the next change or resync, not in a loop; the log line says why.
                self._write_failed(resource, verb, _op_key(op), exc)
                self._refused[(resource, _op_key(op))] = now
                self._planner.touch(op.resource, _op_key(op))
                continue
            self._metrics.writes.labels(resource, verb).inc()
            log.info("kubernetes: %s %s %s/%s", verb, resource, *k)
            self._refused.pop((resource, k), None)
            self._planner.touch(op.resource, k)  # the next pass sees the result (a new Service's cluster IP)
            wrote += 1
        return False, wrote

    def _egress(self, namespace: str, name: str, port_name: str) -> tuple[str, int] | None:
        """The egress listener as pods reach it: a wildcard or loopback bind is advertised as egress_address."""
        target = self._listeners.get().get((namespace, name, port_name)) if self._listeners is not None else None
        return self._reachable(target)

    def _egress_endpoint(self, namespace: str, name: str, port: str, site: str, host: str) -> tuple[str, int] | None:
        """The listener of one remote headless endpoint, as pods reach it (see `_egress`)."""
        held = self._endpoint_listeners
        return self._reachable(held.get().get((namespace, name, port, site, host)) if held is not None else None)

    def _reachable(self, target: tuple[str, int] | None) -> tuple[str, int] | None:
        if target is None:
            return None
        host, port = target
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if ip.is_unspecified or ip.is_loopback:
            if not self.settings.egress_address:
                if self._limiter.allow(("egress", host), time.monotonic()):
                    log.warning("kubernetes: egress listeners bind %s, which pods cannot reach; set "
                                "kubernetes.egress_address to the pod IP", host)
                return None
            host = self.settings.egress_address
        return host, port

    def _write_failed(self, resource: str, verb: str, k: ObjKey, exc: Exception) -> None:
        self._metrics.write_errors.labels(resource, verb).inc()
        if self._limiter.allow((resource, verb, k), time.monotonic()):
            log.warning("kubernetes: %s %s %s/%s failed: %s", verb, resource, k[0], k[1], exc)


def _op_key(op: Op) -> ObjKey:
    return key_of(op.obj) if isinstance(op, Create) else (op.namespace, op.name)
