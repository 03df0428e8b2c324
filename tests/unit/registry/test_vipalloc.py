"""The pure VIP allocation plan (from the mesh view) and the VIP record codec."""

from __future__ import annotations

import dataclasses
import ipaddress

import immutables
import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.errors import MeshfedError, RecordError
from federation.core.keys import Keys
from federation.core.view import MeshView
from federation.core.vips import Allocation, Claim, decode_allocation, decode_claim, encode_allocation, encode_claim
from federation.registry.vipalloc import (
    Allocate,
    DropClaim,
    Extend,
    Mark,
    Release,
    SignedBy,
    needs_vip,
    pick,
    plan,
    unsealed,
)
from tests.dnshelp import export, site, view

RANGES = [ipaddress.ip_network("240.240.0.0/16"), ipaddress.ip_network("fd6d:6573:6866:6564::/64")]
WEB = ("shop", "web")
KEYS = Keys()


def with_vips(v: MeshView, allocs: list[Allocation] = (), claims: list[Claim] = ()) -> MeshView:  # type: ignore[assignment]
    return dataclasses.replace(v, vips={a.service: a for a in allocs}, claims={c.address: c for c in claims})


def exporting(*names: str) -> MeshView:
    return view([site("east")], [export("east", "shop", n, ["10.0.0.1"]) for n in names])


def test_services_that_need_a_vip_are_the_exported_clusterset_ip_ones() -> None:
    v = view([site("east")], [export("east", "shop", "web", ["10.0.0.1"]),
                              export("east", "shop", "db", ["10.0.0.2"], headless=True)])
    assert needs_vip(v, WEB)
    assert not needs_vip(v, ("shop", "db"))
    assert not needs_vip(v, ("shop", "nope"))


def test_a_new_service_gets_one_address_per_range_from_a_hash_of_its_name() -> None:
    ops = plan(exporting("web"), None, now=100, grace=60, ranges=RANGES)
    assert len(ops) == 1
    op = ops[0]
    assert isinstance(op, Allocate)
    v4, v6 = (ipaddress.ip_address(a) for a in op.addresses)
    assert v4 in RANGES[0]
    assert v6 in RANGES[1]
    assert plan(exporting("web"), None, now=999, grace=60, ranges=RANGES) == ops  # the same on every agent
    assert plan(exporting("web"), [("shop", "other")], now=1, grace=60, ranges=RANGES) == []  # only what changed
    assert plan(exporting("web"), None, now=1, grace=60, ranges=RANGES, pending=[WEB]) == []  # written, not seen yet


def test_only_the_families_a_site_serves_are_allocated_and_a_later_one_extends_the_allocation() -> None:
    """A mesh whose sites serve IPv4 only allocates no IPv6 VIP (AAAA would lead nowhere); a site that serves
    IPv6 (capture) adds one to every allocation, keeping the IPv4 address clients have cached."""
    (op,) = plan(exporting("web"), None, now=1, grace=60, ranges=RANGES[:1])
    assert isinstance(op, Allocate)
    (v4,) = op.addresses
    alloc = Allocation(WEB, (v4,), revision=7)
    v = with_vips(exporting("web"), [alloc], [Claim(v4, WEB, 1.0)])
    assert plan(v, None, now=2, grace=60, ranges=RANGES[:1]) == []  # an IPv4-only site: nothing to do
    (grow,) = plan(v, None, now=2, grace=60, ranges=RANGES)
    assert isinstance(grow, Extend)
    assert grow.allocation == alloc
    (v6,) = grow.addresses
    assert ipaddress.ip_address(v6) in RANGES[1]
    assert v6 == pick(WEB, RANGES[1], set())  # the address any other IPv6 site would pick
    full = with_vips(exporting("web"), [Allocation(WEB, (v4, v6))], [Claim(v4, WEB, 1.0), Claim(v6, WEB, 1.0)])
    assert plan(full, None, now=2, grace=60, ranges=RANGES) == []
    assert plan(v, None, now=2, grace=60, ranges=RANGES, pending=[WEB]) == []


def test_taken_addresses_are_skipped_and_two_new_services_never_share_one() -> None:
    first = pick(WEB, RANGES[0], set())
    assert pick(WEB, RANGES[0], {first}) != first
    v = with_vips(exporting("web", "db"), claims=[Claim(first, ("x", "y"), 1.0)])
    ops = plan(v, None, now=1, grace=60, ranges=RANGES[:1])
    addrs = [a for op in ops if isinstance(op, Allocate) for a in op.addresses]
    assert first not in addrs
    assert len(set(addrs)) == 2


def test_a_service_whose_allocation_was_lost_keeps_its_claimed_address() -> None:
    # Its allocation is gone from the view (readers refused a forgery there); its claim is still valid.
    mine = Claim("240.240.7.7", WEB, 1.0, revision=5)
    ops = plan(with_vips(exporting("web"), claims=[mine]), None, now=2, grace=60, ranges=RANGES)
    op = ops[0]
    assert isinstance(op, Allocate)
    assert op.addresses[0] == "240.240.7.7"
    assert op.reused == (mine,)
    assert ipaddress.ip_address(op.addresses[1]) in RANGES[1]  # a new one where it had none


def test_an_address_an_allocation_uses_is_never_given_again_even_without_its_claim() -> None:
    # A raw writer replaced db's claim with a forgery readers refuse: the address is still db's.
    first = pick(WEB, RANGES[0], set())
    v = with_vips(exporting("web", "db"), [Allocation(("shop", "db"), (first,))])
    ops = plan(v, None, now=1, grace=60, ranges=RANGES[:1])
    assert [op.addresses[0] != first for op in ops if isinstance(op, Allocate)] == [True]


def test_a_full_range_is_an_error() -> None:
    net = ipaddress.ip_network("240.240.0.0/30")
    with pytest.raises(MeshfedError, match="full"):
        pick(WEB, net, {"240.240.0.1", "240.240.0.2"})


def test_release_only_after_the_grace_period() -> None:
    alloc = Allocation(WEB, ("240.240.0.9",), revision=7)
    claim = Claim("240.240.0.9", WEB, 1.0, revision=8)
    nobody = exporting()
    # nobody exports it any more: the grace period starts
    assert plan(with_vips(nobody, [alloc], [claim]), None, now=100, grace=60, ranges=RANGES) == [Mark(alloc, 100)]
    unused = Allocation(WEB, ("240.240.0.9",), 100.0, revision=9)
    assert plan(with_vips(nobody, [unused], [claim]), None, now=159, grace=60, ranges=RANGES) == []
    ops = plan(with_vips(nobody, [unused], [claim]), None, now=160, grace=60, ranges=RANGES)
    assert ops == [Release(unused, (claim,))]
    # exported again within the grace period: kept
    assert plan(with_vips(exporting("web"), [unused], [claim]), None, now=150, grace=60,
                ranges=RANGES) == [Mark(unused, None)]


def test_orphan_claims_are_dropped_after_the_grace_period() -> None:
    orphan = Claim("240.240.0.5", WEB, 10.0)
    assert plan(with_vips(exporting(), claims=[orphan]), None, now=20, grace=60, ranges=RANGES) == []
    assert plan(with_vips(exporting(), claims=[orphan]), None, now=70, grace=60, ranges=RANGES) == [DropClaim(orphan)]


def test_claims_of_an_allocation_readers_refuse_or_hold_are_not_dropped() -> None:
    # Its allocation is held (signed by a signer whose site record has not arrived) or forged: not orphaned.
    claim = Claim("240.240.0.5", WEB, 10.0)
    v = with_vips(exporting(), claims=[claim])
    assert plan(v, None, now=700, grace=60, ranges=RANGES, refused=[WEB]) == []
    assert plan(v, None, now=700, grace=60, ranges=RANGES) == [DropClaim(claim)]


def test_codec_round_trip_and_rejects() -> None:
    a = Allocation(WEB, ("240.240.0.1", "fd6d:6573:6866:6564::1"), 5.0)
    assert decode_allocation(encode_allocation(a)) == a
    c = Claim("240.240.0.1", WEB, 3.0)
    assert decode_claim(encode_claim(c)) == c
    for bad in (b"nope", b"{}", b'{"schema":1,"kind":"VipAllocation","namespace":"a","name":"b","addresses":["x"]}'):
        with pytest.raises(RecordError):
            decode_allocation(bad)


_events = st.lists(st.tuples(st.sampled_from(["export", "unexport", "allocate", "free"]),
                             st.sampled_from(["web", "db", "api", "cart"])), max_size=25)


@given(_events)
def test_planning_only_the_changed_services_equals_planning_everything(events: list[tuple[str, str]]) -> None:
    """The allocator plans from the view's changes; what it would do then is what a full pass would do."""
    cat = Catalog(KEYS)
    cat.put(KEYS.site("east"), encode_site(site("east")), 1)
    seen = cat.view().generation
    for rev, (what, name) in enumerate(events, 2):
        if what == "export":
            cat.put(KEYS.service("east", "shop", name), encode_export(export("east", "shop", name, ["10.0.0.1"])), rev)
        elif what == "unexport":
            cat.delete(KEYS.service("east", "shop", name), rev)
        elif what == "allocate":
            cat.put(KEYS.vip("shop", name), encode_allocation(Allocation(("shop", name), (f"240.240.0.{rev}",))), rev)
        else:
            cat.delete(KEYS.vip("shop", name), rev)
        v = cat.view()
        changes = v.changes_since(seen)
        assert changes is not None
        seen = v.generation
        incremental = plan(v, changes.services, now=0, grace=60, ranges=RANGES)
        full = plan(v, None, now=0, grace=60, ranges=RANGES)
        # A full pass also sees services that did not change; for the ones that changed, both agree.
        for service in changes.services:
            assert [op for op in incremental if _service(op) == service] == [
                op for op in full if _service(op) == service]
        assert all(_service(op) in changes.services for op in incremental)


def _service(op: object) -> tuple[str, str] | None:
    if isinstance(op, Allocate):
        return op.service
    if isinstance(op, Mark | Release | Extend):
        return op.allocation.service
    return None


_SIGNERS = {"a1": "a", "a2": "a", "b1": "b", "m1": "me", "m2": "me"}
_vip_events = st.lists(st.one_of(
    st.tuples(st.just("sign"), st.sampled_from(["web", "db", "api"]), st.sampled_from([None, *sorted(_SIGNERS)])),
    st.tuples(st.just("claim"), st.integers(1, 4), st.sampled_from([None, *sorted(_SIGNERS)])),
    st.tuples(st.just("drop"), st.sampled_from(["web", "db", "api"]), st.none()),
    st.tuples(st.just("leave"), st.sampled_from(["a", "b"]), st.none()),
    st.tuples(st.just("renew"), st.none(), st.none()),
    st.tuples(st.just("site"), st.sampled_from(["a", "b", "me"]), st.none()),
), max_size=30)


@given(_vip_events)
def test_resigning_by_signing_site_finds_what_a_full_scan_finds(events: list[tuple[object, object, object]]) -> None:
    """A site record change looks only at the VIP records its site signed (and new or unsigned ones), and finds
    every record a scan of the whole view would; the allocator then signs them with its current key."""
    left: set[str] = set()
    current = ["m1"]

    def due(kid: str) -> bool:  # as RecordVerifier.resign_due has it for the allocator of "me"
        return _SIGNERS[kid] in left or (_SIGNERS[kid] == "me" and kid != current[0])

    vips: immutables.Map[tuple[str, str], Allocation] = immutables.Map()
    claims: immutables.Map[str, Claim] = immutables.Map()
    index = SignedBy(_SIGNERS.get)
    rev = 1
    for what, arg, kid in [("renew", None, None), *events]:
        rev += 1
        signed = (str(kid), rev) if kid is not None else None
        sites: set[str] | None = set()
        if what == "sign":
            vips = vips.set(("shop", str(arg)), Allocation(("shop", str(arg)), ("240.240.0.1",), None, rev, signed))
        elif what == "claim":
            claims = claims.set(f"240.240.0.{arg}", Claim(f"240.240.0.{arg}", ("shop", "web"), 1.0, rev, signed))
        elif what == "drop":
            vips = vips.delete(("shop", str(arg))) if ("shop", str(arg)) in vips else vips
        elif what == "leave":
            left.add(str(arg))
            sites = {str(arg)}
        elif what == "site":
            sites = {str(arg)}
        else:  # this site's signer renewed: the allocator looks at everything
            current[0] = "m2" if current[0] == "m1" else "m1"
            sites = None
        if sites == set():
            continue  # only a site record change (or a new signer) starts a pass, as in VipAllocator.run
        v = MeshView(sites={}, exports={}, vips=vips, claims=claims)
        found = index.due(v, sites, due)
        assert {id(r) for r in found} == {id(r) for r in unsealed(v, due)}
        for r in found:  # the allocator's writes: the view then holds them signed by its current key
            rev += 1
            if isinstance(r, Allocation):
                vips = vips.set(r.service, dataclasses.replace(r, revision=rev, signed=(current[0], rev)))
            else:
                claims = claims.set(r.address, dataclasses.replace(r, revision=rev, signed=(current[0], rev)))


def test_a_site_record_change_looks_at_that_sites_vip_records_only() -> None:
    vips = {("shop", f"s{i}"): Allocation(("shop", f"s{i}"), ("240.240.0.1",), None, 1, (f"k{i % 10}", 1))
            for i in range(100)}
    index = SignedBy(lambda kid: f"site{kid[1:]}")
    v = MeshView(sites={}, exports={}, vips=vips, claims={})
    assert len(index.due(v, None, lambda kid: False)) == 0
    assert index.looked_at == 100
    assert [r.service for r in index.due(v, {"site3"}, lambda kid: kid == "k3")] == [
        ("shop", f"s{i}") for i in range(3, 100, 10)]
    assert index.looked_at == 110
