"""The pure answering core: MCS names, negative answers, EDNS, truncation and hostile input."""

from __future__ import annotations

import dataclasses
import random

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest

from federation.core.endpoints import EndpointAllocator
from federation.core.records import Endpoint, Locality, Protocol, ServicePort
from federation.core.view import MeshView
from federation.dns.answering import Answerer, Forward
from federation.dns.fastpath import FastPath
from federation.dns.nodes import Zone
from federation.dns.zone import ZoneBuilder
from tests.dnshelp import ZONE, big_view, export, query, rcode, site, view

VIPS = ({("shop", "web"): ("240.240.0.7", "fd6d:6573:6866:6564::7")})


def mesh() -> MeshView:
    return view(
        [site("east", "us", "a"), site("west", "us", "b"), site("far", "ap", "a"), site("near", "us", "a")],
        [
            export("east", "shop", "web", ["10.0.0.1"]),
            export("west", "shop", "web", ["10.0.1.1"]),
            export("far", "shop", "db", ["10.2.0.1"], headless=True, hostnames=["db-0"]),
            export("west", "shop", "db", ["10.1.0.1"], headless=True, hostnames=["db-0"]),
            export("east", "shop", "db", ["10.0.0.5", "fd00::5"], headless=True, hostnames=["db-0", None]),
            export("near", "shop", "db", ["10.3.0.1"], headless=True, hostnames=["db-0"]),
            export("west", "shop", "cache", ["10.1.0.9"], headless=True, ready=False),
        ],
    )


def build(v: MeshView | None = None, *, stale: frozenset[str] = frozenset(), pinning: bool = True,
          local: str = "east") -> Zone:
    return ZoneBuilder(ZONE, local_site=local, site_pinning=pinning).build(v or mesh(), stale, VIPS)


def ask(zone: Zone | None, name: str, rdtype: str = "A", *, udp: bool = True, forwarding: bool = False,
        **kw: int) -> dns.message.Message:
    out = Answerer(ZoneBuilder(ZONE, local_site="x").origin, forwarding=forwarding).handle(
        query(name, rdtype, **kw), zone, udp=udp)
    assert isinstance(out, bytes)
    return dns.message.from_wire(out)


def texts(msg: dns.message.Message, section: str = "answer") -> list[str]:
    return [rd.to_text() for rrset in getattr(msg, section) for rd in rrset]


def test_clusterset_ip_answers_the_vip() -> None:
    zone = build()
    a = ask(zone, "web.shop.svc.clusterset.local")
    assert a.rcode() == dns.rcode.NOERROR
    assert a.flags & dns.flags.AA
    assert texts(a) == ["240.240.0.7"]
    assert texts(ask(zone, "web.shop.svc.clusterset.local", "AAAA")) == ["fd6d:6573:6866:6564::7"]
    assert a.answer[0].ttl == 5


def test_headless_answers_ready_endpoints_local_site_first_then_locality() -> None:
    a = ask(build(), "db.shop.svc.clusterset.local")
    # east is local; near shares region and zone; west shares the region; far is elsewhere
    assert texts(a) == ["10.0.0.5", "10.3.0.1", "10.1.0.1", "10.2.0.1"]
    assert texts(ask(build(), "db.shop.svc.clusterset.local", "AAAA")) == ["fd00::5"]


def test_endpoint_locality_overrides_site_locality() -> None:
    v = view([site("east", "us", "a"), site("west", "ap", "b")], [
        export("west", "shop", "db", ["10.1.0.1"], headless=True),
        export("west", "shop", "db", ["10.1.0.2"], headless=True),
    ])
    exp = v.exports[("west", "shop", "db")]
    near = Endpoint(addresses=("10.1.0.3",), locality=Locality("us", "a"))
    v = view(v.sites.values(), [dataclasses.replace(exp, endpoints=(*exp.endpoints, near))])
    assert texts(ask(build(v), "db.shop.svc.clusterset.local"))[0] == "10.1.0.3"


def test_a_headless_service_without_ready_endpoints_does_not_exist() -> None:
    # KEP-1645: "If there are no ready endpoints for a headless service, the answer is NXDOMAIN".
    for name, rdtype in (("cache.shop.svc.clusterset.local", "A"), ("cache.shop.svc.clusterset.local", "SRV"),
                         ("_http._tcp.cache.shop.svc.clusterset.local", "SRV")):
        a = ask(build(), name, rdtype)
        assert a.rcode() == dns.rcode.NXDOMAIN
        assert a.authority[0].rdtype == dns.rdatatype.SOA


def test_stale_sites_are_left_out_while_others_have_ready_endpoints() -> None:
    zone = build(stale=frozenset({"east", "near"}))
    assert texts(ask(zone, "db.shop.svc.clusterset.local")) == ["10.1.0.1", "10.2.0.1"]
    only_stale = build(stale=frozenset({"east", "near", "west", "far"}))
    assert len(texts(ask(only_stale, "db.shop.svc.clusterset.local"))) == 4


def test_srv_for_clusterset_ip_points_at_the_service_with_glue() -> None:
    a = ask(build(), "_http._tcp.web.shop.svc.clusterset.local", "SRV")
    assert texts(a) == ["0 0 80 web.shop.svc.clusterset.local."]
    assert texts(a, "additional") == ["240.240.0.7", "fd6d:6573:6866:6564::7"]


def test_srv_for_headless_names_each_endpoint_by_hostname() -> None:
    a = ask(build(), "_http._tcp.db.shop.svc.clusterset.local", "SRV")
    assert texts(a) == [
        "0 1 8080 db-0.east.db.shop.svc.clusterset.local.",
        "0 1 8080 fd00--5.east.db.shop.svc.clusterset.local.",
        "0 1 8080 db-0.near.db.shop.svc.clusterset.local.",
        "0 1 8080 db-0.west.db.shop.svc.clusterset.local.",
        "0 1 8080 db-0.far.db.shop.svc.clusterset.local.",
    ]
    assert "10.0.0.5" in texts(a, "additional")


def test_endpoint_hostname_names() -> None:
    zone = build()
    assert texts(ask(zone, "db-0.west.db.shop.svc.clusterset.local")) == ["10.1.0.1"]
    assert texts(ask(zone, "fd00--5.east.db.shop.svc.clusterset.local", "AAAA")) == ["fd00::5"]
    assert ask(zone, "db-1.west.db.shop.svc.clusterset.local").rcode() == dns.rcode.NXDOMAIN


def test_site_pinned_names_only_when_enabled_and_only_for_reachable_sites() -> None:
    flat = dataclasses.replace(mesh().sites["west"], network="net-east")  # west shares east's network
    v = view([*(s for s in mesh().sites.values() if s.name != "west"), flat], mesh().exports.values())
    assert texts(ask(build(v), "west.web.shop.svc.clusterset.local")) == ["10.0.1.1"]
    assert texts(ask(build(v), "east.web.shop.svc.clusterset.local")) == ["10.0.0.1"]
    # far is on another network: its pod addresses are not routable from here, so no such name.
    assert ask(build(v), "far.db.shop.svc.clusterset.local").rcode() == dns.rcode.NOERROR  # db-0.far... below
    assert ask(build(v), "far.db.shop.svc.clusterset.local").answer == []
    assert ask(build(), "west.web.shop.svc.clusterset.local").rcode() == dns.rcode.NXDOMAIN
    off = ask(build(v, pinning=False), "west.web.shop.svc.clusterset.local")
    assert off.rcode() == dns.rcode.NXDOMAIN
    assert ZoneBuilder(ZONE, local_site="east").site_pinning is False  # off unless asked for
    ent = ask(build(pinning=False), "west.db.shop.svc.clusterset.local")
    assert ent.rcode() == dns.rcode.NOERROR  # an empty non-terminal above db-0.west...
    assert ent.answer == []


def test_bare_name_srv_for_clusterset_ip_is_one_per_port_and_identical_ones_collapse() -> None:
    tcp, udp, other = ServicePort("tcp", 42), ServicePort("udp", 42, Protocol.UDP), ServicePort("metrics", 9090)
    v = view([site("east")], [export("east", "ns", "hello", ["10.0.0.1"], ports=[tcp, udp])])
    vips = {("ns", "hello"): ("240.240.0.9",)}
    zone = ZoneBuilder(ZONE, local_site="east").build(v, frozenset(), vips)
    a = ask(zone, "hello.ns.svc.clusterset.local", "SRV")
    assert texts(a) == ["0 100 42 hello.ns.svc.clusterset.local."]  # tcp/42 and udp/42: the same record
    assert texts(a, "additional") == ["240.240.0.9"]
    v2 = view([site("east")], [export("east", "ns", "hello", ["10.0.0.1"], ports=[tcp, other])])
    zone = ZoneBuilder(ZONE, local_site="east").build(v2, frozenset(), vips)
    assert sorted(texts(ask(zone, "hello.ns.svc.clusterset.local", "SRV"))) == [
        "0 50 42 hello.ns.svc.clusterset.local.", "0 50 9090 hello.ns.svc.clusterset.local."]


def test_bare_name_srv_for_headless_is_one_per_endpoint_and_port() -> None:
    a = ask(build(), "db.shop.svc.clusterset.local", "SRV")
    assert texts(a) == [
        "0 20 8080 db-0.east.db.shop.svc.clusterset.local.",
        "0 20 8080 fd00--5.east.db.shop.svc.clusterset.local.",
        "0 20 8080 db-0.near.db.shop.svc.clusterset.local.",
        "0 20 8080 db-0.west.db.shop.svc.clusterset.local.",
        "0 20 8080 db-0.far.db.shop.svc.clusterset.local.",
    ]
    assert "10.3.0.1" in texts(a, "additional")


def test_the_apex_has_ns_and_its_glue() -> None:
    builder = ZoneBuilder(ZONE, local_site="east", nameservers=["127.0.0.53", "::1"])
    zone = builder.build(mesh(), frozenset(), VIPS)
    a = ask(zone, "clusterset.local", "NS")
    assert texts(a) == ["ns.clusterset.local."]
    assert texts(a, "additional") == ["127.0.0.53", "::1"]
    assert texts(ask(zone, "ns.clusterset.local")) == ["127.0.0.53"]
    assert texts(ask(zone, "clusterset.local", "SOA"))[0].startswith("ns.clusterset.local. hostmaster.clusterset.local.")
    assert texts(ask(zone, "clusterset.local", "ANY")) == ["ns.clusterset.local."]  # RFC 8482: one RRset


def test_dns_version_ptr_and_soa() -> None:
    zone = build()
    assert texts(ask(zone, "dns-version.clusterset.local", "TXT")) == ['"1.0.0"']
    assert texts(ask(zone, "7.0.240.240.in-addr.arpa", "PTR")) == ["web.shop.svc.clusterset.local."]
    rev = "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.6.5.6.6.6.8.6.3.7.5.6.d.6.d.f.ip6.arpa"
    assert texts(ask(zone, rev, "PTR")) == ["web.shop.svc.clusterset.local."]
    soa = ask(zone, "clusterset.local", "SOA")
    assert soa.answer[0].rdtype == dns.rdatatype.SOA
    assert soa.answer[0][0].minimum == 5


def test_nxdomain_and_nodata_carry_the_soa() -> None:
    zone = build()
    nx = ask(zone, "nope.shop.svc.clusterset.local")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert nx.authority[0].rdtype == dns.rdatatype.SOA
    nodata = ask(zone, "web.shop.svc.clusterset.local", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR
    assert nodata.answer == []
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    for ent in ("svc.clusterset.local", "shop.svc.clusterset.local"):
        assert ask(zone, ent).rcode() == dns.rcode.NOERROR


def test_any_is_answered_minimally() -> None:
    a = ask(build(), "web.shop.svc.clusterset.local", "ANY")
    assert len(a.answer) == 1
    assert a.answer[0].rdtype == dns.rdatatype.A


def test_names_are_case_insensitive_and_the_question_is_echoed() -> None:
    a = ask(build(), "WeB.ShOp.SvC.ClusterSet.LOCAL")
    assert texts(a) == ["240.240.0.7"]
    assert a.question[0].name.to_text() == "WeB.ShOp.SvC.ClusterSet.LOCAL."


def test_edns_is_answered_with_our_buffer_size_and_do_copied() -> None:
    a = ask(build(), "web.shop.svc.clusterset.local", edns=0, payload=4096)
    assert a.edns == 0
    assert a.payload == 1232
    q = dns.message.make_query("web.shop.svc.clusterset.local", "A", want_dnssec=True)
    out = Answerer(ZoneBuilder(ZONE, local_site="x").origin).handle(q.to_wire(), build(), udp=True)
    assert isinstance(out, bytes)
    assert dns.message.from_wire(out).ednsflags & dns.flags.DO
    q = dns.message.make_query("web.shop.svc.clusterset.local", "A", use_edns=1)
    out = Answerer(ZoneBuilder(ZONE, local_site="x").origin).handle(q.to_wire(), build(), udp=True)
    assert isinstance(out, bytes)
    assert dns.message.from_wire(out).rcode() == dns.rcode.BADVERS


def test_big_answers_are_truncated_over_udp_and_whole_over_tcp() -> None:
    addrs = [f"10.9.{i // 200}.{i % 200 + 1}" for i in range(60)]
    zone = build(view([site("east")], [export("east", "shop", "big", addrs, headless=True)]))
    udp = ask(zone, "big.shop.svc.clusterset.local")
    assert udp.flags & dns.flags.TC
    assert len(texts(udp)) < 60
    assert texts(ask(zone, "big.shop.svc.clusterset.local", udp=False)) == addrs
    assert texts(ask(zone, "big.shop.svc.clusterset.local", edns=0, payload=1232)) == addrs


def test_before_the_initial_sync_zone_names_get_servfail() -> None:
    assert ask(None, "web.shop.svc.clusterset.local").rcode() == dns.rcode.SERVFAIL


def test_outside_the_zone_refused_or_forwarded() -> None:
    assert ask(build(), "example.com").rcode() == dns.rcode.REFUSED
    answerer = Answerer(ZoneBuilder(ZONE, local_site="x").origin, forwarding=True)
    out = answerer.handle(query("example.com"), build(), udp=True)
    assert isinstance(out, Forward)
    assert out.query.question[0].name.to_text() == "example.com."


@pytest.mark.parametrize("signed", [False, True])
def test_dns_update_is_not_implemented(signed: bool) -> None:
    """RFC 2136 UPDATE, plain or TSIG-signed (which does not parse without the key): NOTIMP, never FORMERR."""
    answerer = Answerer(ZoneBuilder(ZONE, local_site="x").origin, forwarding=True)
    keyring = dns.tsigkeyring.from_text({"ddns-key.": "c2VjcmV0c2VjcmV0c2VjcmV0"}) if signed else None
    update = dns.update.UpdateMessage("clusterset.local", keyring=keyring)
    update.add("web.shop.svc", 5, "A", "10.0.0.9")
    wire = update.to_wire()
    for zone in (build(), None):
        for udp in (True, False):
            out = answerer.handle(wire, zone, udp=udp)
            assert isinstance(out, bytes)
            assert out[:2] == wire[:2]
            assert dns.opcode.from_flags(int.from_bytes(out[2:4], "big")) == dns.opcode.UPDATE
            assert rcode(out) == dns.rcode.NOTIMP
    broken = bytearray(wire)
    broken[4:6] = b"\x00\x02"  # two zones: malformed, but still not ours to judge
    out = answerer.handle(bytes(broken), build(), udp=True)
    assert isinstance(out, bytes)
    assert rcode(out) == dns.rcode.NOTIMP
    assert FastPath(answerer).answer(wire, True) is None  # the fast path leaves it to the answerer


def test_a_tsig_signed_query_is_told_the_key_is_not_known_here() -> None:
    """This server holds no TSIG keys: a signed query (dig -y) gets NOTAUTH (RFC 8945 5.2), not FORMERR."""
    answerer = Answerer(ZoneBuilder(ZONE, local_site="x").origin, forwarding=False)
    query = dns.message.make_query("web.shop.svc.clusterset.local", "A")
    query.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0c2VjcmV0"}), keyname="k.")
    wire = query.to_wire()
    for udp in (True, False):
        out = answerer.handle(wire, build(), udp=udp)
        assert isinstance(out, bytes)
        assert out[:2] == wire[:2]
        assert rcode(out) == dns.rcode.NOTAUTH
    assert FastPath(answerer).answer(wire, True) is None  # the fast path leaves it to the answerer


def test_hostile_and_odd_messages() -> None:
    answerer = Answerer(ZoneBuilder(ZONE, local_site="x").origin, forwarding=False)
    zone = build()
    assert answerer.handle(b"\x12\x34\x01", zone, udp=True) is None  # short header: dropped
    good = query("web.shop.svc.clusterset.local")
    formerr = answerer.handle(good[:-3], zone, udp=True)
    assert isinstance(formerr, bytes)
    assert rcode(formerr) == dns.rcode.FORMERR
    assert formerr[:2] == good[:2]
    response = dns.message.make_response(dns.message.from_wire(good)).to_wire()
    assert answerer.handle(response, zone, udp=True) is None  # never answer a response
    notify = dns.message.make_query("clusterset.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    out = answerer.handle(notify.to_wire(), zone, udp=True)
    assert isinstance(out, bytes)
    assert rcode(out) == dns.rcode.NOTIMP
    # a compression loop in the question name
    loop = good[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    out = answerer.handle(loop, zone, udp=True)
    assert isinstance(out, bytes)
    assert rcode(out) == dns.rcode.FORMERR
    chaos = dns.message.make_query("web.shop.svc.clusterset.local", "TXT", rdclass="CH")
    out = answerer.handle(chaos.to_wire(), zone, udp=True)
    assert isinstance(out, bytes)
    assert rcode(out) == dns.rcode.REFUSED
    axfr = answerer.handle(query("clusterset.local", "AXFR"), zone, udp=False)
    assert isinstance(axfr, bytes)
    assert rcode(axfr) == dns.rcode.REFUSED
    two = dns.message.make_query("web.shop.svc.clusterset.local", "A")
    two.question.append(two.question[0])
    out = answerer.handle(two.to_wire(), zone, udp=True)
    assert isinstance(out, bytes)
    assert rcode(out) == dns.rcode.FORMERR
    assert answerer.servfail(good) is not None
    assert answerer.servfail(b"\x00") is None


def test_unchanged_services_are_not_rebuilt() -> None:
    builder = ZoneBuilder(ZONE, local_site="east")
    web = builder.build(mesh(), frozenset(), VIPS).parts[("shop", "web")]
    second = builder.build(mesh(), frozenset(), VIPS)
    assert second.parts[("shop", "web")] is web
    db = second.parts[("shop", "db")]
    changed = builder.build(mesh(), frozenset({"west"}), VIPS)
    assert changed.parts[("shop", "db")] is not db
    assert changed.parts[("shop", "web")] is web


def test_incremental_builds_equal_fresh_builds_through_random_changes() -> None:
    rng = random.Random(7)
    v, vips = big_view(60, seed=3)
    builder = ZoneBuilder(ZONE, local_site="east")
    fast = FastPath(Answerer(builder.origin))
    exports = dict(v.exports)
    sites = dict(v.sites)
    stale: frozenset[str] = frozenset()
    keys = sorted(v.exports)
    for step in range(40):
        for _ in range(rng.randint(1, 4)):
            key = rng.choice(keys)
            action = rng.random()
            if action < 0.3:
                exports.pop(key, None)
            elif action < 0.6 and key in exports:
                e = exports[key]
                exports[key] = dataclasses.replace(e, endpoints=e.endpoints[:-1] or e.endpoints)
            elif action < 0.8:
                exports[key] = v.exports[key]
            else:
                moved = dataclasses.replace(v.exports[key], site="far", exported_at=step + 2.0)
                exports[("far", key[1], key[2])] = moved
        if rng.random() < 0.2:
            stale = frozenset(rng.sample(["east", "west", "far"], rng.randint(0, 2)))
        if rng.random() < 0.1:
            sites["far"] = dataclasses.replace(sites["far"], locality=Locality("us", str(step)))
        current = MeshView(dict(sites), dict(exports), step)
        zone = builder.build(current, stale, (vips))
        fast.update(zone)
        fresh = ZoneBuilder(ZONE, local_site="east").build(current, stale, (vips))
        assert dict(zone.nodes) == dict(fresh.nodes)
        fresh_fast = FastPath(Answerer(builder.origin))
        fresh_fast.update(fresh)
        assert fast._table == fresh_fast._table


def test_oversized_labels_names_and_huge_packets_get_formerr() -> None:
    answerer = Answerer(ZoneBuilder(ZONE, local_site="x").origin, forwarding=False)
    zone = build()
    header = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    long_label = header + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"
    long_name = header + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01"
    huge = header + b"\x03web" * 16000 + b"\x00\x00\x01\x00\x01"
    for wire in (long_label, long_name, huge, header + b"\xff" * 60000):
        out = answerer.handle(wire, zone, udp=False)
        assert isinstance(out, bytes)
        assert rcode(out) == dns.rcode.FORMERR
        assert out[:2] == b"\xab\xcd"


def test_the_zone_name_is_configurable() -> None:
    v = mesh()
    zone = ZoneBuilder("mesh.example", local_site="east").build(v, frozenset(), VIPS)
    answerer = Answerer(zone.origin, forwarding=False)

    def ask_here(name: str, rdtype: str = "A") -> dns.message.Message:
        out = answerer.handle(query(name, rdtype), zone, udp=True)
        assert isinstance(out, bytes)
        return dns.message.from_wire(out)

    assert texts(ask_here("web.shop.svc.mesh.example")) == ["240.240.0.7"]
    assert texts(ask_here("dns-version.mesh.example", "TXT")) == ['"1.0.0"']
    assert texts(ask_here("7.0.240.240.in-addr.arpa", "PTR")) == ["web.shop.svc.mesh.example."]
    assert ask_here("web.shop.svc.clusterset.local").rcode() == dns.rcode.REFUSED
    assert ask_here("nope.mesh.example").authority[0].name.to_text() == "mesh.example."


def test_headless_endpoints_of_other_networks_are_answered_at_their_address_here() -> None:
    near = dataclasses.replace(site("near", "us", "a"), network="net-east")  # on east's network
    v = view([site("east", "us", "a"), site("west", "us", "b"), near], [
        export("west", "shop", "db", ["10.1.0.1", "10.1.0.2", "10.1.0.3"], headless=True,
               hostnames=["db-0", None, "db-2"]),
        export("near", "shop", "db", ["10.3.0.1"], headless=True, hostnames=["db-5"]),
    ])
    capacity = EndpointAllocator(["240.241.0.0/30"], "east", "net-east")  # two addresses: db-2 is left out
    table = capacity.update(v)
    here = {r.hostname: r.address for r in table[("shop", "db")]}
    assert set(here) == {"db-0", "10-1-0-2"}
    zone = ZoneBuilder(ZONE, local_site="east").build(v, frozenset(), VIPS, table)
    assert texts(ask(zone, "db-0.west.db.shop.svc.clusterset.local")) == [here["db-0"]]
    assert texts(ask(zone, "10-1-0-2.west.db.shop.svc.clusterset.local")) == [here["10-1-0-2"]]
    assert texts(ask(zone, "db-5.near.db.shop.svc.clusterset.local")) == ["10.3.0.1"]  # same network: its own
    no = ask(zone, "db-2.west.db.shop.svc.clusterset.local")  # no address here: never the unroutable one
    assert no.rcode() == dns.rcode.NXDOMAIN
    bare = ask(zone, "db.shop.svc.clusterset.local")
    assert sorted(texts(bare)) == sorted(["10.3.0.1", *here.values()])
    srv = ask(zone, "_http._tcp.db.shop.svc.clusterset.local", "SRV")
    assert sorted(t.split()[3] for t in texts(srv)) == sorted(
        f"{h}.{s}.db.shop.svc.clusterset.local." for h, s in (("db-5", "near"), ("db-0", "west"), ("10-1-0-2", "west")))
    assert sorted(texts(srv, "additional")) == sorted(["10.3.0.1", *here.values()])
    assert "10.1.0.1" not in texts(ask(zone, "db.shop.svc.clusterset.local", "SRV"), "additional")


def test_a_headless_service_whose_only_endpoints_have_no_address_here_does_not_exist() -> None:
    v = view([site("east", "us", "a"), site("west", "us", "b")], [
        export("west", "shop", "db", ["10.1.0.1"], headless=True, hostnames=["db-0"])])
    zone = ZoneBuilder(ZONE, local_site="east").build(v, frozenset(), VIPS, EndpointAllocator([], "east", "net-east")
                                                      .update(v))
    assert ask(zone, "db.shop.svc.clusterset.local").rcode() == dns.rcode.NXDOMAIN
