"""The `vm:` config section: defaults, parsing and one-line errors."""

from __future__ import annotations

import pytest

from federation.core.errors import ConfigError
from federation.core.records import Protocol
from federation.core.settings import read
from federation.sources.vm.settings import AUTO, CheckSettings, VmSettings


def test_empty_section_gives_defaults() -> None:
    assert read(VmSettings, {}, "vm") == VmSettings()
    assert VmSettings().vip_interface == "meshfed0"
    assert VmSettings().egress_capture == "auto"
    assert read(VmSettings, {"egress_capture": "off"}, "vm").egress_capture == "off"
    # YAML 1.1 reads a bare `on`/`off` as true/false: they mean the same.
    assert read(VmSettings, {"egress_capture": False}, "vm").egress_capture == "off"
    assert read(VmSettings, {"egress_capture": True}, "vm").egress_capture == "on"


def test_full_section() -> None:
    s = read(VmSettings, {
        "address": "198.18.0.2",
        "services": [
            {"namespace": "shop", "name": "web", "ports": [{"name": "http", "port": 8080, "target_port": 18080}],
             "check": {"kind": "http", "path": "/healthz", "interval": 1, "rise": 1, "fall": 2}},
            {"namespace": "shop", "name": "dns", "address": "auto", "ports": [{"name": "dns", "port": 53,
                                                                            "protocol": "udp"}],
             "check": {"kind": "command", "command": ["true"]}},
        ],
        "discovery": {"enabled": True, "types": ["_ipp._tcp.local."], "namespace": "office"},
        "announce": True,
    }, "vm")
    web, dns = s.services
    assert s.address_of(web) == "198.18.0.2"
    assert s.address_of(dns) == AUTO
    assert web.check == CheckSettings(kind="http", path="/healthz", interval=1.0, rise=1, fall=2)
    assert web.check.deadline == 1.0
    assert web.ports[0].target_port == 18080
    assert dns.ports[0].protocol is Protocol.UDP
    assert dns.check.command == ("true",)
    assert s.discovery.enabled
    assert s.discovery.types == ("_ipp._tcp.local.",)
    assert s.announce


@pytest.mark.parametrize(("data", "message"), [
    ({"bogus": 1}, "vm.bogus: unknown field"),
    ({"address": "nowhere"}, "vm.address: 'nowhere' is neither"),
    ({"services": [{"namespace": "shop", "name": "web"}]}, "vm.services[0].ports: is required"),
    ({"services": [{"namespace": "Shop", "name": "web", "ports": [{"name": "h", "port": 1}]}]},
     "vm.services[0].namespace: 'Shop' is not a DNS label"),
    ({"services": [{"namespace": "s", "name": "w", "ports": [{"name": "h", "port": 70000}]}]},
     "vm.services[0].ports[0].port: 70000 is not in 1..65535"),
    ({"services": [{"namespace": "s", "name": "w", "ports": [{"name": "h", "port": 1}],
                    "check": {"kind": "ping"}}]}, "vm.services[0].check.kind: 'ping' is not one of"),
    ({"services": [{"namespace": "s", "name": "w", "ports": [{"name": "h", "port": 1}],
                    "check": {"interval": 1, "timeout": 3}}]}, "vm.services[0].check.timeout: 3.0 is longer"),
    ({"services": [{"namespace": "s", "name": "w", "ports": [{"name": "h", "port": 1}],
                    "check": {"kind": "command"}}]}, "vm.services[0].check.command: is required"),
    ({"services": [{"namespace": "s", "name": "w", "ports": [{"name": "h", "port": 1}]}] * 2},
     "vm.services[1]: s/w is declared twice"),
    ({"discovery": {"types": ["http"]}}, "vm.discovery.types[0]: 'http' is not a DNS-SD type"),
    ({"vip_interface": "a-very-long-interface-name"}, "vm.vip_interface:"),
    ({"announce": "yes"}, "vm.announce: must be true or false"),
    ({"egress_capture": "always"}, "vm.egress_capture: 'always' is not one of auto, on, off"),
])
def test_errors_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        read(VmSettings, data, "vm")
    assert str(info.value).startswith(message)
