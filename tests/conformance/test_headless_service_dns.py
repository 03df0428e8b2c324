"""Port of kubernetes-sigs/mcs-api conformance/headless_service_dns.go (@ded161a) [Optional, DNS, Headless].

Across networks a remote pod's address is not routable from the asking cluster: there its MCS
EndpointSlice holds one endpoint per remote pod, with its hostname and the address that cluster gave it
(the ClusterIP of a per-endpoint Service that leads through the egress and the gateways to that pod),
and DNS answers those. So "the pods' addresses" are, for the asking cluster, the addresses of its slice
endpoints; the StatefulSet spec also connects to each hostname and checks it reached that pod.
"""

from __future__ import annotations

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
    pods = sorted(start(t))
    for c in t.mesh.clusters:
        for family in families(t, c):
            rtype = "A" if family == "IPv4" else "AAAA"

            def answered(c: Cluster = c, rtype: str = rtype, family: str = family) -> bool:
                addresses = pods if c is t.c0 or t.mesh.topology == "same-network" else slice_addresses(t, c, family)
                return len(addresses) == REPLICAS and sorted(t.lookup(c, t.fqdn() + ".", rtype)[1]) == addresses

            eventually(answered, 20, 1, what=f"{t.fqdn()} {rtype} on {c.name}")


def test_a_lookup_of_hostname_clusterid_name_returns_that_pod(t: Driver) -> None:
    """[EndpointSlice] A DNS query of the <hostname>.<clusterid>.<service>.<ns>.svc.clusterset.local domain for a
    headless StatefulSet service should return the requested pod's endpoint address."""
    pods = start(t, statefulset=True)
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

            sl = eventually(slice_of, 60, what=f"the MCS EndpointSlice on {c.name}")
            cluster_id = sl["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]  # type: ignore[index]
            for ep in sl["endpoints"]:  # type: ignore[attr-defined]
                name = f"{ep['hostname']}.{cluster_id}.{t.fqdn()}."
                rtype = "A" if family == "IPv4" else "AAAA"
                eventually(lambda c=c, name=name, rtype=rtype, ep=ep: sorted(t.lookup(c, name, rtype)[1])
                           == sorted(ep["addresses"]), 20, 1, what=f"{name} on {c.name}")
                # Beyond the spec: connecting by the name reaches that one pod (across networks: through the
                # per-endpoint Service, the egress and the gateways). The StatefulSet's pods are in order.
                pod = pods[int(str(ep["hostname"]).rsplit("-", 1)[1])]
                eventually(lambda c=c, name=name, pod=pod: t.nc(c, name, 42).strip() == f"pod ip {pod}", 20, 0.5,
                           what=f"{name}:42 reaching {pod} from {c.name}")


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


def slice_addresses(t: Driver, c: Cluster, family: str) -> list[str]:
    """The addresses of the endpoints of `c`'s MCS EndpointSlices of `family` (what its DNS answers)."""
    return sorted(a for sl in t.mcs_slices(c) if sl["addressType"] == family
                  for ep in sl["endpoints"] for a in ep["addresses"])


def _fail(why: str) -> bool:
    raise AssertionError(why)
