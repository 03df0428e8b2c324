"""The zone builder is incremental: after any sequence of registry events it equals a fresh build."""

from __future__ import annotations

import dataclasses
import socket
from types import MappingProxyType

from hypothesis import example, given, settings
from hypothesis import strategies as st

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.endpoints import EndpointAllocator
from federation.core.keys import Keys
from federation.core.records import ServicePort, ServiceType
from federation.dns.answering import Answerer
from federation.dns.fastpath import FastPath
from federation.dns.nodes import pack
from federation.dns.zone import Stale, ZoneBuilder
from tests.dnshelp import ZONE, export, site

KEYS = Keys()
SITES = ("east", "west", "far")
NAMES = ("web", "db", "api")

_ops = st.lists(st.one_of(
    st.tuples(st.just("site"), st.sampled_from(SITES), st.sampled_from(("a", "b")), st.booleans()),
    st.tuples(st.just("export"), st.sampled_from(SITES), st.sampled_from(NAMES),
              st.lists(st.integers(1, 9), max_size=3), st.booleans(), st.sampled_from((80, 81))),
    st.tuples(st.just("unexport"), st.sampled_from(SITES), st.sampled_from(NAMES)),
    st.tuples(st.just("stale"), st.sets(st.sampled_from(SITES) | st.tuples(  # a site, or one service there
        st.sampled_from(SITES), st.just("shop"), st.sampled_from(NAMES)))),
    st.tuples(st.just("vip"), st.sampled_from(NAMES), st.integers(0, 3)),
), max_size=30)


@settings(max_examples=150)
@given(_ops)
@example([("vip", "db", 1), ("vip", "api", 1), ("site", "east", "a", True),  # two services, one VIP: the PTR
          ("export", "east", "api", [], False, 80), ("export", "east", "db", [], False, 80)])
def test_incremental_zone_equals_a_fresh_build(ops: list[tuple[object, ...]]) -> None:
    cat = Catalog(KEYS)
    builder = ZoneBuilder(ZONE, local_site="east")
    fast = FastPath(Answerer(builder.origin))
    stale: frozenset[Stale] = frozenset()
    vips: dict[tuple[str, str], tuple[str, ...]] = {}
    table = MappingProxyType(dict(vips))
    for rev, op in enumerate(ops, 1):
        if op[0] == "site":
            _, name, zone, present = op
            if present:
                cat.put(KEYS.site(name), encode_site(site(name, zone=str(zone))), rev)
            else:
                cat.delete(KEYS.site(name), rev)
        elif op[0] == "export":
            _, name, svc, hosts, headless, port = op
            e = export(name, "shop", str(svc), [f"10.0.{SITES.index(name)}.{h}" for h in sorted(set(hosts))],
                       headless=bool(headless), ports=(ServicePort("http", int(port)),))  # type: ignore[call-overload]
            cat.put(KEYS.service(name, "shop", str(svc)), encode_export(e), rev)
        elif op[0] == "unexport":
            cat.delete(KEYS.service(str(op[1]), "shop", str(op[2])), rev)
        elif op[0] == "stale":
            stale = frozenset(op[1])  # type: ignore[arg-type]
        else:
            _, svc, n = op
            vips[("shop", str(svc))] = tuple(f"240.240.0.{i + 1}" for i in range(int(n)))  # type: ignore[call-overload]
            table = MappingProxyType(dict(vips))
        view = cat.view()
        zone = builder.build(view, stale, table)
        fast.update(zone)
        fresh_builder = ZoneBuilder(ZONE, local_site="east")
        fresh = fresh_builder.build(view, stale, table)
        assert dict(zone.nodes) == dict(fresh.nodes)
        fresh_fast = FastPath(Answerer(fresh_builder.origin))
        fresh_fast.update(fresh)
        assert fast._table == fresh_fast._table
    assert ServiceType.HEADLESS  # the strategy builds both types


_with_networks = st.lists(st.one_of(
    _ops.filter(bool).map(lambda ops: ops[0]),
    st.tuples(st.just("network"), st.sampled_from(SITES), st.sampled_from(("net-east", "net-x"))),
), max_size=30)


@settings(max_examples=150)
@given(_with_networks)
@example([("site", "west", "a", True), ("export", "west", "db", [1], True, 80),  # a remote pod comes, then another
          ("export", "west", "db", [1, 2], True, 80)])
def test_incremental_zone_with_endpoint_addresses_equals_a_fresh_build(ops: list[tuple[object, ...]]) -> None:
    """The same, with this site's addresses for headless endpoints of other networks (sites moving between
    networks, a range small enough to fill): the incremental zone equals a fresh build from the same table."""
    cat = Catalog(KEYS)
    builder = ZoneBuilder(ZONE, local_site="east")
    book = EndpointAllocator(["240.241.0.0/29"], "east", "net-east")
    stale: frozenset[str] = frozenset()
    table = MappingProxyType({})
    for rev, op in enumerate(ops, 1):
        if op[0] in ("site", "network"):
            name = str(op[1])
            if op[0] == "network":
                record = dataclasses.replace(site(name), network=str(op[2]))
            elif op[3]:
                record = site(name, zone=str(op[2]))
            else:
                cat.delete(KEYS.site(name), rev)
                record = None
            if record is not None:
                cat.put(KEYS.site(name), encode_site(record), rev)
        elif op[0] == "export":
            _, name, svc, hosts, headless, port = op
            e = export(name, "shop", str(svc), [f"10.0.{SITES.index(name)}.{h}" for h in sorted(set(hosts))],
                       headless=bool(headless), ports=(ServicePort("http", int(port)),))  # type: ignore[call-overload]
            cat.put(KEYS.service(name, "shop", str(svc)), encode_export(e), rev)
        elif op[0] == "unexport":
            cat.delete(KEYS.service(str(op[1]), "shop", str(op[2])), rev)
        elif op[0] == "stale":
            stale = frozenset(op[1])  # type: ignore[arg-type]
        view = cat.view()
        endpoints = book.update(view)
        zone = builder.build(view, stale, table, endpoints)
        fresh = ZoneBuilder(ZONE, local_site="east").build(view, stale, table, endpoints)
        assert dict(zone.nodes) == dict(fresh.nodes)
        for svc, remote in endpoints.items():  # a remote endpoint's name answers its address here, only
            for r in remote:
                node = zone.nodes.get((r.hostname.encode(), r.site.encode(), svc[1].encode(), b"shop", b"svc",
                                       *builder.apex))
                assert node is None or node.a == pack([r.address])[0]


def test_a_site_down_for_one_service_is_answered_last_for_that_service_only() -> None:
    """Active health found east without a ready endpoint for shop/db: db answers west's endpoint, api both."""
    cat = Catalog(KEYS)
    for rev, (name, svc, addr) in enumerate([("east", "db", "10.0.0.1"), ("west", "db", "10.0.1.1"),
                                             ("east", "api", "10.0.0.2"), ("west", "api", "10.0.1.2")], 1):
        cat.put(KEYS.site(name), encode_site(site(name, zone="a")), rev)
        cat.put(KEYS.service(name, "shop", svc), encode_export(export(name, "shop", svc, [addr], headless=True)),
                rev + 10)
    builder = ZoneBuilder(ZONE, local_site="far")

    def answer(zone: object, svc: str) -> set[str]:
        node = dict(zone.nodes)[(svc.encode(), b"shop", b"svc", b"clusterset", b"local")]  # type: ignore[attr-defined]
        return {socket.inet_ntoa(a) for a in node.a}

    both = builder.build(cat.view(), frozenset(), {})
    assert answer(both, "db") == {"10.0.0.1", "10.0.1.1"}
    zone = builder.build(cat.view(), frozenset({("east", "shop", "db")}), {})
    assert answer(zone, "db") == {"10.0.1.1"}
    assert answer(zone, "api") == {"10.0.0.2", "10.0.1.2"}
