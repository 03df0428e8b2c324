"""Port of kubernetes-sigs/mcs-api conformance/clusterip_service_dns.go (@ded161a) [Optional, DNS, ClusterIP]."""

from __future__ import annotations

import dns.rcode

from tests.conformance.harness import Driver, eventually, hello_service


def start(t: Driver) -> dict[str, object]:
    svc = t.deploy_hello(t.c0, hello_service())
    t.export(t.c0)
    return svc


def test_a_lookup_of_the_clusterset_name_resolves_to_the_clusterset_ip(t: Driver) -> None:
    """A DNS lookup of the <service>.<ns>.svc.clusterset.local domain for a ClusterIP service should resolve to the
    clusterset IP."""
    start(t)
    for c in t.mesh.clusters:
        si = t.await_import(c, lambda si: si["spec"].get("ips") or _fail("no clusterset IP yet"))
        for ip in si["spec"]["ips"]:
            rtype = "AAAA" if ":" in ip else "A"
            eventually(lambda ip=ip, rtype=rtype, c=c: ip in t.lookup(c, t.fqdn() + ".", rtype)[1], 20, 1,
                       what=f"{t.fqdn()} {rtype} {ip} on {c.name}")


def test_an_srv_query_of_the_clusterset_name_returns_valid_records(t: Driver) -> None:
    """A DNS SRV query of the <service>.<ns>.svc.clusterset.local domain for a ClusterIP service should return valid
    SRV records."""
    svc = start(t)
    port = svc["spec"]["ports"][0]["port"]  # type: ignore[index]
    for c in t.mesh.clusters:
        # tcp/42 and udp/42 give the same record: exactly one, as Kubernetes DNS answers.
        records = eventually(lambda c=c: _srv(t, c), 20, 1, what=f"SRV records on {c.name}")
        assert records == [(port, t.fqdn())]


def test_a_lookup_of_the_cluster_local_name_resolves_only_the_local_service(t: Driver) -> None:
    """DNS lookups of the <service>.<ns>.svc.cluster.local domain for a ClusterIP service should only resolve local
    services."""
    svc = start(t)
    local_ip = svc["spec"]["clusterIP"]  # type: ignore[index]
    name = f"hello.{t.namespace}.svc.cluster.local."
    # The site's DNS forwards cluster.local to the cluster's own DNS and answers nothing of its own there.
    eventually(lambda: t.lookup(t.c0, name) == (dns.rcode.NOERROR, [local_ip]), 20, 1, what=f"{name} on c0")


def _srv(t: Driver, c: object) -> list[tuple[int, str]]:
    _, answers = t.lookup(c, t.fqdn() + ".", "SRV")  # type: ignore[arg-type]
    return sorted((int(a.split()[2]), a.split()[3].rstrip(".")) for a in answers)


def _fail(why: str) -> bool:
    raise AssertionError(why)
