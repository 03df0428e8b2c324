"""The workloads of a Kubernetes site: pod IP -> namespace/serviceAccount, unambiguous addresses only."""

from __future__ import annotations

from typing import Any

from federation.core.workloads import Workloads, by_network
from federation.sources.kubernetes.workloads import pod_kept, workloads_of


def pod(name: str, ips: list[str], sa: str | None = "web", phase: str = "Running", host: bool = False,
        ns: str = "shop") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "x"}], "nodeName": "n1", "hostNetwork": host}
    if sa is not None:
        spec["serviceAccountName"] = sa
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "resourceVersion": "7", "labels": {"app": name},
                         "uid": "u", "annotations": {"a": "b"}},
            "spec": spec,
            "status": {"phase": phase, "podIP": ips[0] if ips else "", "podIPs": [{"ip": ip} for ip in ips],
                       "hostIP": "192.0.2.1", "conditions": [{"type": "Ready", "status": "True"}]}}


def index(*pods: dict[str, Any]) -> dict[str, str]:
    return dict(workloads_of([pod_kept(p) for p in pods]).addresses)


def test_a_pod_ip_names_its_namespace_and_service_account_and_only_that_is_kept() -> None:
    kept = pod_kept(pod("a", ["10.244.1.5", "fd00::5"]))
    assert kept == {"metadata": {"namespace": "shop", "name": "a", "resourceVersion": "7", "labels": {"app": "a"}},
                    "spec": {"serviceAccountName": "web"}, "status": {"podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]}}
    assert index(pod("a", ["10.244.1.5", "fd00::5"])) == {"10.244.1.5": "shop/web", "fd00::5": "shop/web"}
    assert index(pod("b", ["10.244.1.6"], sa=None)) == {"10.244.1.6": "shop/default"}  # what Kubernetes sets


def test_shared_finished_and_ambiguous_addresses_name_no_workload() -> None:
    assert index(pod("h", ["192.0.2.1"], host=True)) == {}  # the node's address: every host-network pod's
    assert index(pod("done", ["10.244.1.7"], phase="Succeeded")) == {}  # its IP is free for another pod
    assert pod_kept(pod("pending", []))["metadata"]["name"] == "pending"
    assert index(pod("pending", [])) == {}
    reused = index(pod("old", ["10.244.1.8"], sa="batch"), pod("new", ["10.244.1.8"], sa="web"))
    assert reused == {}  # two live pods, two accounts: unknown until one is gone
    same = index(pod("x", ["10.244.1.9"]), pod("y", ["10.244.1.9"]))
    assert same == {"10.244.1.9": "shop/web"}
    assert index(pod("bad", ["not-an-ip"]), pod("long", ["10.244.2.1"], sa="a" * 254)) == {}


def test_lookup_by_address_normalises_and_falls_back_to_networks() -> None:
    w = Workloads({"10.0.0.5": "shop/web", "fd00::5": "shop/web"},
                  by_network({"10.0.0.0/8": "lan/any", "10.1.0.0/16": "lan/one", "127.0.0.0/8": "vm/self"}))
    assert w.lookup("10.0.0.5") == "shop/web"
    assert w.lookup("::ffff:10.0.0.5") == "shop/web"  # a dual-stack listener's view of an IPv4 client
    assert w.lookup("10.1.2.3") == "lan/one"  # the longest prefix first
    assert w.lookup("10.2.2.3") == "lan/any"
    assert w.lookup("127.0.0.1") == "vm/self"
    assert w.lookup("192.0.2.1") is None
    assert w.lookup("garbage") is None
    assert Workloads().lookup("10.0.0.5") is None
