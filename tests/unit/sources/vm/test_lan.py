"""The pure conversion of DNS-SD instances found on a LAN into export records."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from federation.core.records import Protocol, validate_export
from federation.sources.vm.lan import Found, convert, service_label


def test_instance_becomes_a_service_with_the_type_as_port() -> None:
    [e] = convert("vm-a", "lan", [Found("_http._tcp.local.", "Office Printer", ("198.18.7.2", "fe80::1"), 8631)])
    assert (e.namespace, e.name) == ("lan", "office-printer")
    assert (e.ports[0].name, e.ports[0].port, e.ports[0].protocol) == ("http", 8631, Protocol.TCP)
    assert e.endpoints[0].addresses == ("198.18.7.2",)  # link-local dropped


def test_same_instance_under_two_types_and_label_clashes_stay_unique() -> None:
    found = [
        Found("_http._tcp.local.", "Office", ("198.18.7.2",), 80),
        Found("_ipp._tcp.local.", "Office", ("198.18.7.2",), 631),
        Found("_sip._udp.local.", "a b", ("198.18.7.3",), 5060),
        Found("_sip._udp.local.", "A-B", ("198.18.7.4",), 5060),
    ]
    exports = convert("vm-a", "lan", found)
    names = [e.name for e in exports]
    assert len(set(names)) == 4
    assert {"office-http", "office-ipp"} <= set(names)
    assert all(e.ports[0].protocol is Protocol.UDP for e in exports if e.ports[0].name == "sip")


def test_instances_without_usable_addresses_are_left_out() -> None:
    assert convert("vm-a", "lan", [Found("_http._tcp.local.", "x", ("fe80::2",), 80)]) == []


@given(st.lists(st.tuples(st.text(max_size=80), st.sampled_from(["_http._tcp.local.", "_a-very-long-name._tcp.local."]),
                          st.integers(1, 65535)), max_size=8))
def test_any_instance_names_give_valid_unique_records(items: list[tuple[str, str, int]]) -> None:
    found = {(inst, t): Found(t, inst, ("198.18.7.2",), port) for inst, t, port in items}
    exports = convert("vm-a", "lan", found.values())
    for e in exports:
        validate_export(e)
    assert len({e.name for e in exports}) == len(exports) == len(found)


def test_service_label() -> None:
    assert service_label("Living Room TV (2)") == "living-room-tv-2"
    assert service_label("日本").startswith("-") is False
    assert len(service_label("x" * 100)) == 63


def test_announcements_cover_imported_services_with_vips_only() -> None:
    from federation.core.records import ServicePort
    from federation.core.view import MeshView
    from federation.sources.vm.lan import announcements
    from tests.util import export, site

    vips = {("shop", "web"): ("240.240.0.5",), ("shop", "mine"): ("240.240.0.6",)}
    view = MeshView(
        sites={"vm-a": site("vm-a"), "vm-b": site("vm-b")},
        exports={
            ("vm-b", "shop", "web"): export("vm-b", "web", ports=(ServicePort("http", 80), ServicePort("dns", 53,
                                                                                                   Protocol.UDP))),
            ("vm-b", "shop", "novip"): export("vm-b", "novip"),
            ("vm-a", "shop", "mine"): export("vm-a", "mine"),
        },
    )
    got = announcements(view, vips, "vm-a")
    assert sorted(got) == ["web (shop)._dns._udp.local.", "web (shop)._http._tcp.local."]
    a = got["web (shop)._http._tcp.local."]
    assert (a.addresses, a.port, a.server) == (("240.240.0.5",), 80, "web-shop-vm-a.local.")
