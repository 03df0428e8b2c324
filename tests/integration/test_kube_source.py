"""The Kubernetes source against the development API server, a real etcd, and the real Publisher and Mirror."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from federation.core.backoff import Backoff
from federation.core.keys import Keys
from federation.core.records import Endpoint, ServiceExport, ServicePort
from federation.core.view import PortId
from federation.devkit.apiserver import DevApiServer
from federation.devkit.objects import endpoint, endpointslice, service, serviceexport
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.mirror import Mirror
from federation.registry.policysync import PolicyOwner
from federation.registry.publisher import Publisher
from federation.runtime.values import Value, follow
from federation.sources.kubernetes.conversion import ENDPOINT_LABELS_ANNOTATION
from federation.sources.kubernetes.importing import derived_name
from federation.sources.kubernetes.policysync import PolicyWriter
from federation.sources.kubernetes.settings import KubernetesSettings
from federation.sources.kubernetes.source import KubernetesSource
from tests.util import HandPublisher, eventually, export, site

KEYS = Keys()
EGRESS = ("10.244.0.9", 20001)


def fast() -> Backoff:
    return Backoff(base=0.05, cap=0.3)


@dataclass
class Cluster:
    api: DevApiServer
    source: KubernetesSource
    mirror: Mirror
    metrics: CollectorRegistry
    published: list[list[ServiceExport]] = field(default_factory=list)

    def exported(self) -> dict[tuple[str, str, str], ServiceExport]:
        return dict(self.mirror.mesh.get().exports)

    def conditions(self, name: str = "web") -> dict[str, tuple[str, str]]:
        se = self.api.get("serviceexports", "shop", name) or {}
        return {c["type"]: (c["status"], c["reason"]) for c in (se.get("status") or {}).get("conditions", [])}


@asynccontextmanager
async def cluster(etcd: EtcdProcess, tmp_path: Path, api: DevApiServer,
                  policies: PolicyWriter | None = None) -> AsyncIterator[Cluster]:
    """Site `east` (network net-a) run as a Kubernetes site against `api`."""
    settings = KubernetesSettings(enabled=True, kubeconfig=str(api.kubeconfig(tmp_path / "kubeconfig")),
                                  backoff_base=0.05, backoff_cap=0.3, reconcile_delay=0.01, request_timeout=3,
                                  egress_address=EGRESS[0])
    mirror = Mirror(EtcdClient([etcd.endpoint], timeout=3), KEYS, backoff=fast())
    metrics = CollectorRegistry()
    source = KubernetesSource(settings, "east", mesh=mirror.mesh, listeners=Value(_EveryPort(("0.0.0.0", EGRESS[1]))),
                              metrics=metrics, policies=policies)
    publisher = Publisher(EtcdClient([etcd.endpoint], timeout=3), KEYS, Value(site("east")), source.exports, ttl=5,
                          backoff=fast())
    c = Cluster(api, source, mirror, metrics)

    async def record() -> None:
        async for _ in follow(source.exports):
            c.published.append(list(source.exports.get()))

    tasks = [asyncio.create_task(publisher.run(), name="publisher"), asyncio.create_task(mirror.run(), name="mirror"),
             asyncio.create_task(source.run(), name="kubernetes-source"), asyncio.create_task(record(), name="record")]
    try:
        yield c
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in tasks:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]


class _EveryPort(Mapping[PortId, tuple[str, int]]):
    """Egress listeners as a test stands them in: one address for every service port."""

    def __init__(self, listener: tuple[str, int]) -> None:
        self.listener = listener

    def __getitem__(self, key: PortId) -> tuple[str, int]:
        return self.listener

    def __iter__(self) -> Iterator[PortId]:
        return iter(())

    def __len__(self) -> int:
        return 0


def other_site(etcd: EtcdProcess, name: str, network: str, exports: list[ServiceExport]) -> HandPublisher:
    return HandPublisher(EtcdClient([etcd.endpoint], timeout=3), KEYS, site(name, network=network), exports, ttl=5,
                         backoff=fast())


@asynccontextmanager
async def running(*publishers: HandPublisher) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(p.run(), name=f"publisher-{p.site.name}") for p in publishers]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def seed_web(api: DevApiServer) -> None:
    api.put(service())
    api.put(endpointslice(endpoints=[endpoint("10.244.1.5"), endpoint("10.244.1.6")]))
    api.put(serviceexport())


async def test_export_reaches_registry_with_status_and_readiness_flows(etcd: EtcdProcess, tmp_path: Path) -> None:
    async with DevApiServer() as api, cluster(etcd, tmp_path, api) as c:
        seed_web(api)
        key = ("east", "shop", "web")
        await eventually(lambda: key in c.exported(), what="export in the registry")
        e = c.exported()[key]
        assert [(x.addresses, x.ready) for x in e.endpoints] == [(("10.244.1.5",), True), (("10.244.1.6",), True)]
        assert e.ports == (ServicePort("http", 80),)
        await eventually(lambda: c.conditions() == {"Valid": ("True", "Valid"), "Ready": ("True", "Exported"),
                                                    "Conflict": ("False", "NoConflicts")}, what="ServiceExport status")
        api.put(endpointslice(endpoints=[endpoint("10.244.1.5", ready=False), endpoint("10.244.1.6")]))
        await eventually(lambda: not c.exported()[key].endpoints[0].ready, what="readiness change in the registry")
        assert c.source.eastwest_address.get() is None
        lb = service("meshfed-system", "meshfed-eastwest", type="LoadBalancer")
        api.put({**lb, "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7", "ipMode": "VIP"}]}}})
        await eventually(lambda: c.source.eastwest_address.get() == "203.0.113.7", what="east-west address")
        api.put(serviceexport(name="ghost"))
        await eventually(lambda: c.conditions("ghost").get("Valid") == ("False", "NoService"), what="NoService")
        api.remove("serviceexports", "shop", "web")
        await eventually(lambda: key not in c.exported(), what="export withdrawn")


async def test_conflict_is_written_to_status(etcd: EtcdProcess, tmp_path: Path) -> None:
    older = ServiceExport("west", "shop", "web", (ServicePort("http", 9090),), endpoints=(Endpoint(("10.8.0.1",)),),
                          exported_at=1000.0)
    async with DevApiServer() as api, running(other_site(etcd, "west", "net-b", [older])), \
            cluster(etcd, tmp_path, api) as c:
        seed_web(api)
        await eventually(lambda: c.conditions().get("Conflict") == ("True", "PortConflict"), what="PortConflict")
        se = api.get("serviceexports", "shop", "web")
        assert se is not None
        [conflict] = [x for x in se["status"]["conditions"] if x["type"] == "Conflict"]
        assert "exported first by west" in conflict["message"]
        # The older export is told too: MCS wants Conflict on every export of a conflicting service.
        assert "differ" in conflict["message"]


async def test_imports_create_and_remove_owned_objects(etcd: EtcdProcess, tmp_path: Path) -> None:
    near = export("near", name="db", addresses=("10.1.0.5",))
    far = export("far", name="db", addresses=("10.9.0.5",))
    derived = derived_name("db")
    async with DevApiServer() as api, cluster(etcd, tmp_path, api) as c:
        api.put(service(name="db"))  # a local Service of the same name that the agent must not touch
        pubs = (other_site(etcd, "near", "net-a", [near]), other_site(etcd, "far", "net-b", [far]))
        async with running(*pubs):
            await eventually(lambda: len(owned_slices(api)) == 2 and api.get("serviceimports", "shop", "db"),
                             what="ServiceImport, derived Service and slices")
            imp = api.get("serviceimports", "shop", "db")
            svc = api.get("services", "shop", derived)
            assert imp is not None
            assert svc is not None
            assert "selector" not in svc["spec"]
            await eventually(lambda: api.get("serviceimports", "shop", "db")["spec"]["ips"]  # type: ignore[index]
                             == [svc["spec"]["clusterIP"]], what="cluster IP in the ServiceImport")
            await eventually(lambda: dict(c.source.cluster_ips.get()) == {("shop", "db"): (svc["spec"]["clusterIP"],)},
                             what="the derived ClusterIP for DNS")
            await eventually(lambda: api.get("serviceimports", "shop", "db").get("status")  # type: ignore[union-attr]
                             == {"clusters": [{"cluster": "far"}, {"cluster": "near"}]}, what="ServiceImport status")
            addresses = sorted((e["addresses"][0], s["ports"][0]["port"])
                               for s in owned_slices(api) for e in s["endpoints"])
            assert addresses == [("10.1.0.5", 8080), EGRESS]
            pubs[0].set_exports([])
            await eventually(lambda: len(owned_slices(api)) == 1, what="near's slice removed")
            pubs[1].set_exports([])
            await eventually(lambda: api.get("serviceimports", "shop", "db") is None
                             and api.get("services", "shop", derived) is None and not owned_slices(api),
                             what="import removed")
        assert api.get("services", "shop", "db") is not None


async def test_survives_410_and_dropped_connections_without_withdrawing(etcd: EtcdProcess, tmp_path: Path) -> None:
    near = export("near", name="db", addresses=("10.1.0.5",))
    async with DevApiServer() as api, running(other_site(etcd, "near", "net-a", [near])), \
            cluster(etcd, tmp_path, api) as c:
        seed_web(api)
        await eventually(lambda: ("east", "shop", "web") in c.exported() and owned_slices(api), what="first sync")
        uids = {o["metadata"]["uid"] for store in api.objects.values() for o in store.values()}
        lists, calls = api.list_count, len(c.published)
        api.bookmark()
        api.expire()
        await eventually(lambda: api.list_count >= lists + 4, what="relist of all four resources after 410")
        api.unavailable = True
        api.drop_watches()
        await eventually(lambda: api.watch_count > 0 and not api.watchers, what="watches gone")
        await asyncio.sleep(0.3)  # several failed reconnects while the server is away
        api.unavailable = False
        api.put(endpointslice(endpoints=[endpoint("10.244.1.5"), endpoint("10.244.1.7")]))
        await eventually(lambda: ("10.244.1.7",) in [e.addresses for e in c.exported()[("east", "shop", "web")]
                                                    .endpoints], what="change after reconnect")
        assert all(any(e.name == "web" for e in p) for p in c.published[calls - 1:]), "an export was withdrawn"
        assert uids <= {o["metadata"]["uid"] for store in api.objects.values() for o in store.values()}
        assert not any(verb == "delete" for verb, _, _ in api.calls)
        m = c.metrics.get_sample_value
        assert m("meshfed_kubernetes_watch_restarts_total", {"resource": "services", "reason": "expired"}) == 1
        assert m("meshfed_kubernetes_exports") == 1
        # db from near, and web exported by this site itself; a write refused while the server was away (503)
        # is retried with backoff, so the count converges rather than being right at once.
        await eventually(lambda: m("meshfed_kubernetes_imports") == 2, what="imports after the outage")


def owned_slices(api: DevApiServer) -> list[dict[str, Any]]:
    return [s for s in api.objects["endpointslices"].values()
            if s["metadata"].get("labels", {}).get("multicluster.meshfed.io/managed-by") == "meshfed"]


def rbac_rules() -> set[tuple[str, str, str]]:
    """(verb, group, resource) triples the ClusterRole in deploy/kubernetes/rbac.yaml grants."""
    import yaml

    granted = set()
    for doc in yaml.safe_load_all(Path("deploy/kubernetes/rbac.yaml").read_text()):
        if doc["kind"] == "ClusterRole":
            for rule in doc["rules"]:
                granted |= {(v, g, r) for v in rule["verbs"] for g in rule["apiGroups"] for r in rule["resources"]}
    return granted


async def test_endpoints_carry_the_pod_labels_the_serviceexport_names_and_follow_them(etcd: EtcdProcess,
                                                                                        tmp_path: Path) -> None:
    """The labels a weighted split selects on (`version: v2`) come from the pods behind the slice endpoints, for
    the keys the ServiceExport names; a relabelled pod relabels its endpoint."""
    def pod(address: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "shop", "name": f"pod-{address}",
                                                                "labels": labels},
                "status": {"phase": "Running"}}

    async with DevApiServer() as api, cluster(etcd, tmp_path, api) as c:
        api.put(pod("10.244.1.5", {"version": "v1", "app": "web"}))
        api.put(pod("10.244.1.6", {"version": "v2", "app": "web"}))
        api.put(service())
        api.put(endpointslice(endpoints=[endpoint("10.244.1.5"), endpoint("10.244.1.6")]))
        se = serviceexport()
        se["metadata"]["annotations"] = {ENDPOINT_LABELS_ANNOTATION: "version"}
        api.put(se)
        key = ("east", "shop", "web")

        def labels() -> list[tuple[tuple[str, str], ...]]:
            e = c.exported().get(key)
            return [x.labels for x in e.endpoints] if e is not None else []

        await eventually(lambda: labels() == [(("version", "v1"),), (("version", "v2"),)], what="pod labels")
        api.put(pod("10.244.1.5", {"version": "v2", "app": "web"}))
        await eventually(lambda: labels() == [(("version", "v2"),), (("version", "v2"),)], what="a relabelled pod")
        assert c.source.stores["pods"][("shop", "pod-10.244.1.5")]["metadata"].keys() == {
            "namespace", "name", "resourceVersion", "labels"}  # only what is needed is kept


async def test_the_workload_behind_a_pod_ip_follows_the_pods(etcd: EtcdProcess, tmp_path: Path) -> None:
    """Pod IP -> namespace/serviceAccount, as the egress names it: added, finished, deleted; never a host-network
    pod's (the node's) address."""
    def pod(name: str, ip: str, sa: str, phase: str = "Running", host: bool = False) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "shop", "name": name},
                "spec": {"serviceAccountName": sa, "hostNetwork": host, "containers": [{"name": "c", "image": "i"}]},
                "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}}

    async with DevApiServer() as api, cluster(etcd, tmp_path, api) as c:
        api.put(pod("web-1", "10.244.1.5", "web"))
        api.put(pod("node-agent", "192.0.2.10", "agent", host=True))
        await eventually(lambda: dict(c.source.workloads.get().addresses) == {"10.244.1.5": "shop/web"},
                         what="the pod's workload")
        api.put(pod("batch-1", "10.244.1.6", "batch"))
        await eventually(lambda: c.source.workloads.get().lookup("10.244.1.6") == "shop/batch", what="a new pod")
        api.put(pod("batch-1", "10.244.1.6", "batch", phase="Succeeded"))
        await eventually(lambda: c.source.workloads.get().lookup("10.244.1.6") is None, what="a finished pod")
        api.remove("pods", "shop", "web-1")
        await eventually(lambda: not c.source.workloads.get().addresses, what="a deleted pod")


async def test_rbac_grants_exactly_the_calls_the_agent_makes(etcd: EtcdProcess, tmp_path: Path) -> None:
    near = export("near", name="db", addresses=("10.1.0.5",))
    writer = PolicyOwner(EtcdClient([etcd.endpoint], timeout=3), KEYS, "east", sign=None, require=False)
    async with DevApiServer() as api, cluster(etcd, tmp_path, api, policies=writer) as c:
        seed_web(api)
        for kind, spec in (("TrafficPolicy", {"retries": {"attempts": 2}}), ("AccessPolicy", {"rules": []})):
            api.put({"apiVersion": "meshfed.io/v1alpha1", "kind": kind, "spec": spec,
                     "metadata": {"namespace": "shop", "name": "web", "generation": 1}})
        api.put({"apiVersion": "meshfed.io/v1alpha1", "kind": "MeshAccessPolicy", "spec": {"defaultAction": "Allow"},
                 "metadata": {"name": "default", "generation": 1}})
        pub = other_site(etcd, "near", "net-a", [near])
        async with running(pub):
            await eventually(lambda: api.get("serviceimports", "shop", "db") is not None and c.conditions(), what="sync")
            await eventually(lambda: api.get("serviceimports", "shop", "db")["spec"]["ips"] != [],  # type: ignore[index]
                             what="ServiceImport patched")
            pub.set_exports([export("near", name="db", addresses=("10.1.0.5",), ready=False)])
            await eventually(lambda: any(not e["conditions"]["ready"] for s in owned_slices(api) for e in s["endpoints"]),
                             what="slice patched")
            pub.set_exports([export("near", name="db", addresses=("10.1.0.5",), ports=(ServicePort("pg", 5432),))])
            await eventually(lambda: api.get("serviceimports", "shop", "db")["spec"]["ports"][0]["name"]  # type: ignore[index]
                             == "pg" and any(s["ports"][0]["name"] == "pg" for s in owned_slices(api)),
                             what="derived Service and slices patched")
            pub.set_exports([])
            # The import and its derived Service go in separate calls: wait for both deletes.
            await eventually(lambda: api.get("serviceimports", "shop", "db") is None
                             and api.get("services", "shop", derived_name("db")) is None, what="import deleted")
        await eventually(lambda: all((api.get(r, "shop", "web") or {}).get("status") for r in
                                     ("trafficpolicies", "accesspolicies"))
                         and (api.get("meshaccesspolicies", "", "default") or {}).get("status"),
                         what="policy objects' status")
    used = {(verb, group, res) for verb, group, res in api.calls}
    assert used == rbac_rules()


async def test_foreign_objects_are_left_alone(etcd: EtcdProcess, tmp_path: Path) -> None:
    foreign = {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
               "metadata": {"name": "db", "namespace": "shop", "labels": {"team": "a"}},
               "spec": {"type": "Headless", "ports": [{"port": 1, "protocol": "TCP"}]}}
    pubs = (other_site(etcd, "near", "net-a", [export("near", name="db"), export("near", name="api")]),)
    async with DevApiServer() as api, running(*pubs), cluster(etcd, tmp_path, api):
        api.put(foreign)
        before = copy.deepcopy(api.get("serviceimports", "shop", "db"))
        await eventually(lambda: api.get("serviceimports", "shop", "api") is not None, what="the other import")
        await eventually(lambda: ("create", "multicluster.x-k8s.io", "serviceimports") in api.calls
                         and api.get("services", "shop", derived_name("db")) is not None, what="attempts on db")
        pubs[0].set_exports([export("near", name="api")])
        await eventually(lambda: api.get("services", "shop", derived_name("db")) is None, what="db's owned objects gone")
        assert api.get("serviceimports", "shop", "db") == before
