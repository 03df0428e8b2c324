"""The capture index: (VIP, port) -> service port, kept per service; incremental equals from scratch."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from federation.core.records import Protocol, ServicePort, ServiceType
from federation.core.view import MeshView
from gateway.destinations import (
    Captured,
    Change,
    DestinationIndex,
    Released,
    build,
    capture_of,
    changes,
    wanted,
)
from tests.pkihelp import export, view
from tests.util import site

ip = ipaddress.ip_address


def test_lookup_names_the_service_port_and_nothing_else() -> None:
    index = build([Captured(("shop", "web"), ("240.240.0.1", "fd6d::1"), (("http", 80), ("admin", 9000)))])
    assert index.lookup(ip("240.240.0.1"), 80) == ("shop", "web", "http")
    assert index.lookup(ip("240.240.0.1"), 9000) == ("shop", "web", "admin")
    assert index.lookup(ip("fd6d::1"), 80) == ("shop", "web", "http")
    assert index.lookup(ip("240.240.0.1"), 81) is None
    assert index.lookup(ip("240.240.0.2"), 80) is None
    assert len(index) == 4
    index.apply(Released(("shop", "web")))
    assert len(index) == 0
    assert index.lookup(ip("240.240.0.1"), 80) is None


def test_a_change_replaces_what_the_service_held() -> None:
    index = build([Captured(("shop", "web"), ("240.240.0.1",), (("http", 80),))])
    index.apply(Captured(("shop", "web"), ("240.240.0.9",), (("http", 8080),)))
    assert index.table() == {(ip("240.240.0.9"), 8080): ("shop", "web", "http")}


def test_two_services_on_one_vip_resolve_to_the_smaller_key_whatever_the_order() -> None:
    a = Captured(("a", "x"), ("240.240.0.1",), (("http", 80),))
    b = Captured(("b", "x"), ("240.240.0.1",), (("http", 80),))
    assert build([a, b]).table() == build([b, a]).table() == {(ip("240.240.0.1"), 80): ("a", "x", "http")}
    index = build([a, b])
    index.apply(Released(("a", "x")))
    assert index.lookup(ip("240.240.0.1"), 80) == ("b", "x", "http")


def test_what_is_captured() -> None:
    sites = [site("me", "n1"), site("other", "n2")]
    udp = export("other", "ns", "dns", 53)
    udp = type(udp)(udp.site, udp.namespace, udp.name, (ServicePort("dns", 53, Protocol.UDP),), udp.type, udp.endpoints)
    headless = export("other", "ns", "db", 5432)
    headless = type(headless)(headless.site, "ns", "db", headless.ports, ServiceType.HEADLESS, headless.endpoints)
    v = view(sites, [export("other", "ns", "web", 80), export("me", "ns", "mine", 81), udp, headless])
    vips = {("ns", s): (f"240.240.0.{i}",) for i, s in enumerate(("web", "mine", "dns", "db"), 1)}
    assert set(wanted(v, vips, "me", include_own=False)) == {("ns", "web")}
    assert set(wanted(v, vips, "me", include_own=True)) == {("ns", "web"), ("ns", "mine")}
    # Without a VIP (not yet allocated) there is nothing to capture.
    assert wanted(v, {}, "me", include_own=True) == {}
    assert capture_of(("ns", "gone"), None, (), "me", True) == Released(("ns", "gone"))
    # VIPs come normalised, invalid ones are left out.
    web = v.service("ns", "web")
    got = capture_of(("ns", "web"), web, ("fd6d:0::1", "nonsense", "240.240.0.1"), "me", False)
    assert got == Captured(("ns", "web"), ("240.240.0.1", "fd6d::1"), (("tcp", 80),))


# ---------------------------------------------------------------- incremental equals from scratch

SERVICES = [(ns, name) for ns in ("a", "b") for name in ("x", "y", "z")]
VIPS = ["240.240.0.1", "240.240.0.2", "240.240.0.3", "fd6d::1", "fd6d:0::2", "not-an-ip"]
PORTS = [("http", 80), ("https", 443), ("alt", 80), ("db", 5432)]

captures = st.builds(
    Captured,
    st.sampled_from(SERVICES),
    st.lists(st.sampled_from(VIPS), max_size=3).map(tuple),
    st.lists(st.sampled_from(PORTS), max_size=3, unique_by=lambda p: p[0]).map(tuple),
)
steps = st.lists(st.one_of(captures, st.builds(Released, st.sampled_from(SERVICES))), max_size=40)


def _reference(final: dict[tuple[str, str], Captured]) -> dict[tuple[object, int], tuple[str, str, str]]:
    """The table computed the obvious way: every claim, the smallest key per destination."""
    claims: dict[tuple[object, int], set[tuple[str, str, str]]] = {}
    for c in final.values():
        for vip in c.vips:
            try:
                address = ipaddress.ip_address(vip)
            except ValueError:
                continue
            for name, port in c.ports:
                claims.setdefault((address, port), set()).add((*c.service, name))
    return {dest: min(keys) for dest, keys in claims.items()}


@given(steps)
def test_applying_changes_one_by_one_equals_building_the_end_state(sequence: list[Change]) -> None:
    index = DestinationIndex()
    final: dict[tuple[str, str], Captured] = {}
    for change in sequence:
        index.apply(change)
        if isinstance(change, Captured):
            final[change.service] = change
        else:
            final.pop(change.service, None)
    assert index.table() == build(final.values()).table() == _reference(final)
    assert dict(index.services) == final


SITES = [site("me", "n1"), site("s2", "n2"), site("s3", "n3")]
exports_st = st.lists(
    st.tuples(st.sampled_from(["me", "s2", "s3"]), st.sampled_from(SERVICES), st.sampled_from([80, 443, 5432]),
              st.sampled_from([ServiceType.CLUSTER_SET_IP, ServiceType.HEADLESS])),
    max_size=8,
)
tables_st = st.dictionaries(st.sampled_from(SERVICES), st.lists(st.sampled_from(VIPS), max_size=2).map(tuple),
                            max_size=6)


def _view(rows: list[tuple[str, tuple[str, str], int, ServiceType]]) -> MeshView:
    out = []
    for site_name, (ns, name), port, kind in rows:
        e = export(site_name, ns, name, port)
        out.append(type(e)(e.site, ns, name, e.ports, kind, e.endpoints))
    return view(SITES, out)


@given(st.lists(st.tuples(exports_st, tables_st, st.booleans()), min_size=1, max_size=6))
def test_following_random_registry_snapshots_by_changes_equals_a_fresh_build(
        snapshots: list[tuple[list[tuple[str, tuple[str, str], int, ServiceType]], dict[tuple[str, str],
                                                                                         tuple[str, ...]], bool]],
) -> None:
    index = DestinationIndex()
    held: dict[tuple[str, str], Captured] = {}
    for rows, vips, include_own in snapshots:
        now = wanted(_view(rows), vips, "me", include_own)
        todo = changes(held, now)
        for change in todo:
            index.apply(change)
        # Only the services that differ are touched.
        assert {c.service for c in todo} == {k for k in held.keys() | now.keys() if held.get(k) != now.get(k)}
        held = now
        assert index.table() == build(now.values()).table()


@given(st.lists(st.tuples(exports_st, tables_st), min_size=1, max_size=6), st.booleans())
def test_captured_services_followed_per_service_equal_a_full_update(
        snapshots: list[tuple[list[tuple[str, tuple[str, str], int, ServiceType]], dict[tuple[str, str],
                                                                                     tuple[str, ...]]]],
        include_own: bool,
) -> None:
    from gateway.destinations import CapturedServices

    followed = CapturedServices("me", include_own)
    before: tuple[MeshView, dict[tuple[str, str], tuple[str, ...]]] | None = None
    for rows, vips in snapshots:
        v = _view(rows)
        if before is None:
            followed.update(v, vips)
        else:
            old_view, old_vips = before
            touched = {(e.namespace, e.name) for e in (*v.exports.values(), *old_view.exports.values())}
            followed.update(v, vips, touched | vips.keys() | old_vips.keys())
        fresh = CapturedServices("me", include_own)
        fresh.update(v, vips)
        assert followed.index.table() == fresh.index.table()
        assert len(followed) == len(fresh)
        before = (v, vips)
