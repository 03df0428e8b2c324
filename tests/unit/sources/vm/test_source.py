"""What the VM's interface holds for headless endpoints of other networks, change by change."""

from __future__ import annotations

import ipaddress

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.endpoints import EndpointAllocator
from federation.core.keys import Keys
from federation.core.records import Endpoint, Locality, ServiceExport, ServicePort, ServiceType, Site
from federation.core.vips import VipAddresses
from federation.runtime.values import Derived, Value
from federation.sources.vm.settings import VmSettings
from federation.sources.vm.source import VmSource

KEYS = Keys()


def _export(name: str, hosts: list[str]) -> ServiceExport:
    return ServiceExport("east", "shop", name, (ServicePort("pg", 5432),), type=ServiceType.HEADLESS,
                         endpoints=tuple(Endpoint((f"10.1.0.{i + 1}",), hostname=h) for i, h in enumerate(hosts)))


def test_the_interface_holds_remote_endpoint_addresses_also_when_one_takes_a_freed_address() -> None:
    cat = Catalog(KEYS)
    cat.put(KEYS.site("west"), encode_site(Site("west", "net-w", Locality("eu", "a"))), 1)
    cat.put(KEYS.site("east"), encode_site(Site("east", "net-e", Locality("eu", "a"))), 2)
    cat.put(KEYS.service("east", "shop", "db"), encode_export(_export("db", ["db-0", "db-1"])), 3)
    cat.put(KEYS.service("east", "shop", "mq"), encode_export(_export("mq", ["mq-0"])), 4)
    mesh = Value(cat.view())
    book = EndpointAllocator(["240.241.0.0/30"], "west", "net-w")  # two addresses: mq-0 waits
    table = Derived(lambda: book.update(mesh.get()), mesh)
    source = VmSource(VmSettings(), "west", mesh=mesh, endpoints=table)

    def held() -> set[str]:
        view = mesh.get()
        return {str(a) for a in source._wanted(view, VipAddresses(view.vips))}

    assert held() == {"240.241.0.1", "240.241.0.2"}
    cat.delete(KEYS.service("east", "shop", "db"), 5)  # mq is not in this change; it takes a freed address
    mesh.set(cat.view())
    [mq] = table.get()[("shop", "mq")]
    assert held() == {mq.address}
    assert ipaddress.ip_address(mq.address) in ipaddress.ip_network("240.241.0.0/30")
