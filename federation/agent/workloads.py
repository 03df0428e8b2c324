"""Wiring: the index of who is behind the egress's clients (`federation.core.workloads`), from the site's source.

A Kubernetes site's comes from the pods its source watches (pod IP -> namespace/serviceAccount). A VM's comes
from its config: `vm.workload_identity` for the VM's own processes, whose connections come from loopback, the
VM's address or the VIP and endpoint ranges on its VIP interface (addresses that exist only on this VM, so a
LAN host cannot borrow them and still complete a TCP handshake), and `vm.workload_identities` by network.
"""

from __future__ import annotations

import logging

from federation.agent.dataplane import DataPlane
from federation.core.errors import ConfigError
from federation.core.workloads import Workloads, by_network
from federation.runtime.values import Value
from federation.sources.vm.netlink import own_address
from federation.sources.vm.settings import VmSettings

log = logging.getLogger(__name__)

LOCAL = ("127.0.0.0/8", "::1/128")


async def wire_workloads(plane: DataPlane) -> None:
    """Hand the egress the site's workload index (after `plane.start()`, before its tasks run)."""
    egress, s = plane.egress, plane.settings
    if egress is None:
        return
    if plane.kubernetes is not None:
        egress.workloads = plane.kubernetes.workloads
        return
    vm = s.vm
    if s.site.kind != "vm" or not (vm.workload_identity or vm.workload_identities):
        return
    address = vm.address
    if vm.workload_identity and address == "auto":
        try:
            address = await own_address()
        except (OSError, ConfigError) as exc:
            log.warning("vm.workload_identity: the VM's own address is unknown (%s): only loopback and VIP "
                        "clients are named %s", exc, vm.workload_identity)
            address = ""
    egress.workloads = Value(vm_workloads(vm, s.dns.vip_ranges, address), name="vm workload identities")
    log.info("egress names workload %s for this VM's clients (%d source network(s) mapped)",
             vm.workload_identity or "(none)", len(egress.workloads.get().networks))


def vm_workloads(vm: VmSettings, vip_ranges: tuple[str, ...], address: str) -> Workloads:
    """A VM's index: its own addresses (loopback, `address`, the VIP and endpoint ranges) name its
    `workload_identity`, whatever `workload_identities` says of them; other networks as configured."""
    networks = dict(vm.workload_identities)
    if vm.workload_identity:
        own = [*LOCAL, *vip_ranges, *vm.endpoint_ranges, *([address] if address else [])]
        networks.update(dict.fromkeys(own, vm.workload_identity))
    return Workloads(networks=by_network(networks))
