"""The workload behind an egress client: by its source address, never for a client from outside the mesh."""

from __future__ import annotations

from typing import Any

from federation.core.workloads import Workloads
from federation.runtime.values import Value
from gateway.identities import client_workload
from gateway.ingress import _IngressLeg
from gateway.relay import PlainLeg


class _Peer:
    """What a leg's transport says of its peer (the one call `client_workload` makes of it)."""

    def __init__(self, host: str) -> None:
        self.host = host

    def get_extra_info(self, name: str) -> Any:
        return (self.host, 40000) if name == "peername" else None


def test_a_client_is_named_by_its_source_address_unless_it_came_through_ingress() -> None:
    workloads = Value(Workloads({"10.244.1.5": "shop/web"}), name="workloads")
    leg = PlainLeg()
    leg.transport = _Peer("10.244.1.5")  # type: ignore[assignment]
    assert client_workload(workloads, leg) == "shop/web"
    leg.transport = _Peer("10.244.1.6")  # type: ignore[assignment]
    assert client_workload(workloads, leg) is None
    assert _IngressLeg.outside is True  # an ingress client with a pod's address (another network's) is no pod
    outside = PlainLeg()
    outside.transport = _Peer("10.244.1.5")  # type: ignore[assignment]
    outside.outside = True  # type: ignore[attr-defined]
    assert client_workload(workloads, outside) is None
