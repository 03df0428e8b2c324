"""Port of kubernetes-sigs/mcs-api conformance/headless_service_dns.go (@ded161a) [Optional, DNS, Headless].

Across networks these pass against the answers' addresses, which are the remote pods' own: routing
each of them through the egress and gateways is the phase 2 of issue 15 (headless services across
networks), so the StatefulSet case's MCS EndpointSlice is not yet one endpoint per remote pod there.
"""

from __future__ import annotations

import pytest

from tests.conformance.harness import Cluster, Driver, eventually, hello_service

REPLICAS = 2


def start(t: Driver, statefulset: bool = False) -> list[str]:
    """The hello service headless with two replicas on cluster[0], exported; the pods' addresses."""
    t.deploy_hello(t.c0, hello_service(clusterIP="None"), replicas=REPLICAS, statefulset=statefulset)
    t.export(t.c0)
    return [p.ip for p in t.pods[t.c0.name]]


def families(t: Driver, c: Cluster) -> list[str]:
    si = t.await_import(c, lambda si: si["spec"].get("ipFamilies") or _fail("no ipFamilies"))
    return list(si["spec"]["ipFamilies"])


def test_a_lookup_of_the_clusterset_name_returns_every_ready_endpoint(t: Driver) -> None:
    """A DNS query of the <service>.<ns>.svc.clusterset.local domain for a headless service should return the ready
    endpoint addresses of all the backing pods."""
    addresses = sorted(start(t))
    for c in t.mesh.clusters:
        for family in families(t, c):
            rtype = "A" if family == "IPv4" else "AAAA"
            eventually(lambda c=c, rtype=rtype: sorted(t.lookup(c, t.fqdn() + ".", rtype)[1]) == addresses, 20, 1,
                       what=f"{t.fqdn()} {rtype} on {c.name}")


def test_a_lookup_of_hostname_clusterid_name_returns_that_pod(t: Driver, request: pytest.FixtureRequest) -> None:
    """[EndpointSlice] A DNS query of the <hostname>.<clusterid>.<service>.<ns>.svc.clusterset.local domain for a
    headless StatefulSet service should return the requested pod's endpoint address."""
    if t.mesh.topology == "cross-network":
        request.applymarker(pytest.mark.xfail(strict=True, reason="phase 2 of issue 15: across networks the MCS "
                                              "slice holds the egress, not one endpoint per remote pod"))
    start(t, statefulset=True)
    for c in t.mesh.clusters:
        for family in families(t, c):
            def slice_of(c: Cluster = c, family: str = family) -> dict[str, object]:
                found = None
                for sl in t.mcs_slices(c):
                    if sl["addressType"] == family and sl["endpoints"]:
                        found = sl
                        assert len(sl["endpoints"]) == REPLICAS, f"{len(sl['endpoints'])} endpoints in {sl}"
                        for ep in sl["endpoints"]:
                            assert ep["conditions"].get("ready", True)
                            assert ep.get("hostname"), f"no hostname in {ep}"
                assert found is not None, f"no MCS EndpointSlice on {c.name}"
                return found

            within = 60 if t.mesh.topology == "same-network" else 10  # across networks it fails (phase 2)
            sl = eventually(slice_of, within, what=f"the MCS EndpointSlice on {c.name}")
            cluster_id = sl["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]  # type: ignore[index]
            for ep in sl["endpoints"]:  # type: ignore[attr-defined]
                name = f"{ep['hostname']}.{cluster_id}.{t.fqdn()}."
                rtype = "A" if family == "IPv4" else "AAAA"
                eventually(lambda c=c, name=name, rtype=rtype, ep=ep: sorted(t.lookup(c, name, rtype)[1])
                           == sorted(ep["addresses"]), 20, 1, what=f"{name} on {c.name}")


def test_an_srv_query_of_the_clusterset_name_returns_one_record_per_endpoint(t: Driver) -> None:
    """A DNS SRV query of the <service>.<ns>.svc.clusterset.local domain for a headless service should return valid
    SRV records."""
    addresses = start(t)
    hostnames = [a.replace(".", "-") for a in addresses]  # no hostname: the address, dashed
    for c in t.mesh.clusters:
        def records(c: Cluster = c) -> list[tuple[int, str]]:
            _, answers = t.lookup(c, t.fqdn() + ".", "SRV")
            out = [(int(a.split()[2]), a.split()[3]) for a in answers]
            assert len(out) == len(addresses), f"{len(out)} SRV records: {out}"
            return out

        got = eventually(records, 20, 1, what=f"SRV records on {c.name}")
        for host in hostnames:
            match = [r for r in got if r[1].startswith(host)]
            assert match, f"no SRV record for {host} in {got}"
            assert match[0][0] == 42


def _fail(why: str) -> bool:
    raise AssertionError(why)
