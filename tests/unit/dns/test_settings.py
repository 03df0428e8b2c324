"""Parsing the `dns:` config section."""

from __future__ import annotations

import pytest

from federation.core.errors import ConfigError
from federation.core.settings import read
from federation.dns.settings import DnsSettings, split_hostport


def test_defaults_and_a_full_section() -> None:
    assert read(DnsSettings, {}, "dns") == DnsSettings()
    s = read(DnsSettings,
        {"udp": ["127.0.0.1:5353", "[::1]:5353"], "tcp": "127.0.0.1:5353", "zone": "Mesh.Example.",
         "ttl": 30, "upstreams": ["9.9.9.9"], "forwarding": False, "site_pinning": False,
         "vip_ranges": ["240.241.0.0/16"], "workers": 4, "forward_timeout": 1},
        "dns",
    )
    assert s.zone == "mesh.example"
    assert s.udp == ("127.0.0.1:5353", "[::1]:5353")
    assert s.tcp == ("127.0.0.1:5353",)
    assert s.forward_timeout == 1.0
    assert not s.forwarding


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"ttl": "5"}, "dns.ttl: '5' is not a whole number"),
        ({"ttl": -1}, "dns.ttl: -1 is not in 0..86400"),
        ({"udp": ["localhost:53"]}, "dns.udp[0]: 'localhost:53' is not IP[:port]"),
        ({"udp": []}, "dns.udp: needs at least one address"),
        ({"zone": "a..b"}, "dns.zone:"),
        ({"forwarding": "yes"}, "dns.forwarding: must be true or false"),
        ({"vip_ranges": ["240.0.0.0/8", "10.0.0.0/8"]}, "dns.vip_ranges: more than one IPv4 range"),
        ({"vip_ranges": ["nope"]}, "dns.vip_ranges[0]: 'nope' is not a network"),
        ({"bogus": 1}, "dns.bogus: unknown field"),
        ({"forward_timeout": 0}, "dns.forward_timeout: must be a positive number"),
    ],
)
def test_bad_fields_name_the_field_and_the_reason(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace(".", r"\.")):
        read(DnsSettings, data, "dns")


def test_split_hostport() -> None:
    assert split_hostport("1.2.3.4") == ("1.2.3.4", 53)
    assert split_hostport("1.2.3.4:5") == ("1.2.3.4", 5)
    assert split_hostport("[::1]:5") == ("::1", 5)
    assert split_hostport("::1") == ("::1", 53)
