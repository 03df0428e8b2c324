"""Port of kubernetes-sigs/mcs-api conformance/connectivity.go (@ded161a).

`nc <fqdn> <port>` from the request pod is: resolve with the site's DNS, connect to the answer (the
derived Service's ClusterIP, served by the development cluster's kube-proxy stand-in) and read the
backend's `pod ip <ip>` line. Across networks that path runs through the egress and the gateways.
"""

from __future__ import annotations

from tests.conformance.harness import Cluster, Driver, eventually, hello_service


def await_output(t: Driver, c: Cluster, port: int, expected: str, iterations: int) -> None:
    """awaitCmdOutputMatches(..., nIter): the command must pass `iterations` times in a row."""
    passes = {"n": 0}

    def check() -> bool:
        out = t.nc(c, t.fqdn(), port)
        if expected in out:
            passes["n"] += 1
        else:
            passes["n"] = 0
            raise AssertionError(f"nc {t.fqdn()} {port} on {c.name}: {out!r}")
        return passes["n"] >= iterations

    eventually(check, 20 * iterations, 1 if iterations == 1 else 0.2, what=f"{expected!r} from {c.name}:{port}")


def connectivity(t: Driver, port: int, expected: str, iterations: int) -> None:
    """execPortConnectivityCommand: from every cluster."""
    for c in t.mesh.clusters:
        t.await_import(c, lambda si: si["spec"].get("ipFamilies") or _fail("no ipFamilies"))
        await_output(t, c, port, expected, iterations)


def test_a_service_that_is_not_exported_is_inaccessible(t: Driver) -> None:
    """[Required] Connectivity to a service that is not exported should be inaccessible."""
    t.deploy_hello(t.c0, hello_service())
    for c in t.mesh.clusters:
        for _ in range(20):
            assert "pod ip" not in t.nc(c, t.fqdn(), 42)


def test_an_exported_clusterip_service_is_accessible_through_dns(t: Driver) -> None:
    """[Optional, Connectivity, ClusterIP] Connectivity to an exported ClusterIP service should be accessible
    through DNS."""
    t.deploy_hello(t.c0, hello_service())
    t.export(t.c0)
    connectivity(t, 42, "pod ip", 1)


def test_a_service_in_two_clusters_exported_from_one_only_reaches_the_exporter(t: Driver) -> None:
    """[Optional, Connectivity, ClusterIP] A ClusterIP service existing in two clusters but exported from one should
    only access the exporting cluster."""
    t.deploy_hello(t.c0, hello_service())
    t.deploy_hello(t.c1, hello_service())
    t.export(t.c0)
    connectivity(t, 42, f"pod ip {t.pods[t.c0.name][0].ip}", 10)


def test_same_port_name_with_other_numbers_only_reaches_the_cluster_that_exposes_the_port(t: Driver) -> None:
    """[Optional, Connectivity, ClusterIP, StrictPortConflict] Exported services with same port name but different
    port numbers on each cluster should only route traffic to the cluster that exposes the port."""
    t.deploy_hello(t.c0, hello_service())
    t.two_clusters(hello_service(ports=[{"name": "tcp", "port": 4242, "protocol": "TCP", "targetPort": 42}]))
    connectivity(t, 42, f"pod ip {t.pods[t.c0.name][0].ip}", 10)


def test_different_port_names_route_each_port_to_the_cluster_that_exposes_it(t: Driver) -> None:
    """[Optional, Connectivity, ClusterIP, StrictPortConflict] Exported services with different port name on each
    cluster should route traffic to each port only to the cluster that exposes it."""
    t.deploy_hello(t.c0, hello_service())
    t.two_clusters(hello_service(ports=[{"name": "tcp2", "port": 4242, "protocol": "TCP", "targetPort": 42}]))
    connectivity(t, 42, f"pod ip {t.pods[t.c0.name][0].ip}", 10)
    connectivity(t, 4242, f"pod ip {t.pods[t.c1.name][0].ip}", 10)


def _fail(why: str) -> bool:
    raise AssertionError(why)
