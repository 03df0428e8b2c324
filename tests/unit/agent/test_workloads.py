"""A VM site's workload identities from its config: its own addresses name its workload, LAN networks theirs."""

from __future__ import annotations

import pytest

from federation.agent.workloads import vm_workloads
from federation.core.errors import ConfigError
from federation.core.settings import read
from federation.sources.vm.settings import VmSettings

VIPS = ("240.240.0.0/16", "fd6d:6573:6866:6564::/64")


def test_the_vms_own_addresses_name_its_workload_and_lan_networks_their_own() -> None:
    vm = read(VmSettings, {"address": "192.0.2.7", "workload_identity": "billing/batch",
                           "workload_identities": {"192.0.2.0/24": "lan/printers", "127.0.0.0/8": "x/y"}}, "vm")
    w = vm_workloads(vm, VIPS, vm.address)
    assert w.lookup("127.0.0.1") == "billing/batch"  # loopback is the VM itself, whatever the map says
    assert w.lookup("192.0.2.7") == "billing/batch"  # the VM's own address, inside the LAN's network
    assert w.lookup("240.240.3.4") == "billing/batch"  # a VIP as source: a local client of a local VIP
    assert w.lookup("240.241.0.9") == "billing/batch"  # the endpoint range, on the VIP interface too
    assert w.lookup("192.0.2.99") == "lan/printers"
    assert w.lookup("198.51.100.1") is None
    assert vm_workloads(read(VmSettings, {}, "vm"), VIPS, "").lookup("127.0.0.1") is None  # none by default


@pytest.mark.parametrize(("raw", "error"), [
    ({"workload_identity": "billing"}, "vm.workload_identity: 'billing' is not namespace/service-account"),
    ({"workload_identity": "Billing/batch"}, "is not namespace/service-account"),
    ({"workload_identities": {"10.0.0.0/33": "a/b"}}, "'10.0.0.0/33' is not a network"),
    ({"workload_identities": {"10.0.0.0/8": "a/b/c"}}, "vm.workload_identities.10.0.0.0/8: 'a/b/c' is not"),
    ({"workload_identities": ["10.0.0.0/8"]}, "must be a mapping of networks"),
])
def test_a_bad_workload_config_names_the_field(raw: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace(".", r"\.").replace("/", "/")):
        read(VmSettings, raw, "vm")
