"""Port of kubernetes-sigs/mcs-api conformance/endpoint_slice.go (@ded161a) [Optional, EndpointSlice]."""

from __future__ import annotations

from tests.conformance.harness import Cluster, Driver, eventually, hello_service, slices

K8S_MANAGER = "endpointslice-controller.k8s.io"


def test_exporting_creates_an_mcs_endpointslice_everywhere_and_unexporting_deletes_it(t: Driver) -> None:
    """Exporting a service should create an MCS EndpointSlice in the service's namespace in each cluster with the
    required MCS labels. Unexporting should delete the EndpointSlice."""
    t.deploy_hello(t.c0, hello_service())
    t.export(t.c0)
    names: dict[str, list[str]] = {}
    for c in t.mesh.clusters:
        families = t.await_import(c, lambda si: si["spec"].get("ipFamilies") or _fail("no ipFamilies"))["spec"][
            "ipFamilies"]
        for family in families:
            def found(c: Cluster = c, family: str = family) -> dict[str, object]:
                for sl in t.mcs_slices(c):
                    if sl["addressType"] == family and sl["endpoints"]:
                        return sl
                raise AssertionError(f"no MCS EndpointSlice ({family}) on {c.name}")

            sl = eventually(found, 60, what=f"an MCS EndpointSlice on {c.name}")
            labels = sl["metadata"]["labels"]  # type: ignore[index]
            assert labels["multicluster.kubernetes.io/service-name"] == "hello"
            assert labels["endpointslice.kubernetes.io/managed-by"] != K8S_MANAGER
            names.setdefault(c.name, []).append(sl["metadata"]["name"])  # type: ignore[index]
    t.unexport(t.c0)
    for c in t.mesh.clusters:
        for name in names[c.name]:
            eventually(lambda c=c, name=name: c.api.get(slices(t.namespace, name)) is None, 20,
                       what=f"{name} deleted on {c.name}")


def _fail(why: str) -> bool:
    raise AssertionError(why)
