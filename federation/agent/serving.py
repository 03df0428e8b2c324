"""What a site serves, derived from the mesh view and its settings: the VIP families and addresses, the exports.

Pure functions over value holders, shared by the data plane (federation.agent.dataplane) and the tests that
wire a VM source the way the agent does.
"""

from __future__ import annotations

import ipaddress

from federation.core.exportset import ExportSet
from federation.core.records import ServiceExport
from federation.core.view import MeshView, VipTable
from federation.core.vips import VipAddresses
from federation.runtime.values import Derived, Readable
from federation.sources.vm.capture import EgressCapture


def merged_exports(static: tuple[ServiceExport, ...],
                   kubernetes: tuple[ServiceExport, ...]) -> tuple[ServiceExport, ...]:
    """Static exports first (they win a namespace/name), then the cluster's."""
    merged = ExportSet(lambda _exports: None)
    merged.set("static", static)
    merged.set("kubernetes", kubernetes)
    return merged.merged()


def served_ranges(ranges: tuple[str, ...], capture: EgressCapture | None) -> tuple[str, ...]:
    """The VIP ranges of the families this site serves: IPv4 always, IPv6 where the capture listener takes it."""
    ipv6 = capture is not None and capture.active and capture.ipv6
    return tuple(r for r in ranges if ipv6 or ipaddress.ip_network(r, strict=False).version == 4)


def served_addresses(mesh: Readable[MeshView], capture: EgressCapture | None) -> Derived[VipTable]:
    """The VIPs DNS answers, the VIP interface holds and the egress serves: the ones the egress can serve.

    A per-port listener binds one address per service port, so IPv4 only; the capture listener takes the
    IPv6 VIPs too. Read from the view, so they change with it (shared with the tests that wire a VM source).
    """
    family = 0 if capture is not None and capture.active and capture.ipv6 else 4
    return Derived(lambda: VipAddresses(mesh.get().vips, family=family), mesh, name="ClusterSetIP addresses")
