"""The pure VIP allocation plan and its record codec."""

from __future__ import annotations

import ipaddress

import pytest

from federation.core.errors import MeshfedError, RecordError
from federation.registry.vipalloc import (
    Allocate,
    Allocation,
    Claim,
    DropClaim,
    MarkUnused,
    MarkUsed,
    Release,
    State,
    decode_allocation,
    decode_claim,
    encode_allocation,
    encode_claim,
    pick,
    plan,
    wanted_services,
)
from tests.dnshelp import export, site, view

RANGES = [ipaddress.ip_network("240.240.0.0/16"), ipaddress.ip_network("fd6d:6573:6866:6564::/64")]
WEB = ("shop", "web")


def state(allocs: list[Allocation] = (), claims: list[Claim] = ()) -> State:  # type: ignore[assignment]
    return State({a.service: (a, encode_allocation(a)) for a in allocs},
                 {c.address: (c, encode_claim(c)) for c in claims})


def test_wanted_services_are_the_exported_clusterset_ip_ones() -> None:
    v = view([site("east")], [export("east", "shop", "web", ["10.0.0.1"]),
                              export("east", "shop", "db", ["10.0.0.2"], headless=True)])
    assert wanted_services(v) == {WEB}


def test_a_new_service_gets_one_address_per_range_from_a_hash_of_its_name() -> None:
    ops = plan(state(), [WEB], now=100, grace=60, ranges=RANGES)
    assert len(ops) == 1
    op = ops[0]
    assert isinstance(op, Allocate)
    v4, v6 = (ipaddress.ip_address(a) for a in op.addresses)
    assert v4 in RANGES[0]
    assert v6 in RANGES[1]
    assert plan(state(), [WEB], now=999, grace=60, ranges=RANGES) == ops  # the same on every agent


def test_taken_addresses_are_skipped_and_two_new_services_never_share_one() -> None:
    first = pick(WEB, RANGES[0], set())
    assert pick(WEB, RANGES[0], {first}) != first
    ops = plan(state(claims=[Claim(first, ("x", "y"), 1.0)]), [WEB, ("shop", "db")], now=1, grace=60,
               ranges=RANGES[:1])
    addrs = [a for op in ops if isinstance(op, Allocate) for a in op.addresses]
    assert first not in addrs
    assert len(set(addrs)) == 2


def test_a_full_range_is_an_error() -> None:
    net = ipaddress.ip_network("240.240.0.0/30")
    with pytest.raises(MeshfedError, match="full"):
        pick(WEB, net, {"240.240.0.1", "240.240.0.2"})


def test_release_only_after_the_grace_period() -> None:
    alloc = Allocation(WEB, ("240.240.0.9",))
    claim = Claim("240.240.0.9", WEB, 1.0)
    # nobody exports it any more: the grace period starts
    ops = plan(state([alloc], [claim]), [], now=100, grace=60, ranges=RANGES)
    assert len(ops) == 1
    assert isinstance(ops[0], MarkUnused)
    assert decode_allocation(ops[0].new).unused_since == 100
    unused = Allocation(WEB, ("240.240.0.9",), 100.0)
    assert plan(state([unused], [claim]), [], now=159, grace=60, ranges=RANGES) == []
    ops = plan(state([unused], [claim]), [], now=160, grace=60, ranges=RANGES)
    assert len(ops) == 1
    assert isinstance(ops[0], Release)
    assert ops[0].claims == (("240.240.0.9", encode_claim(claim)),)
    # exported again within the grace period: kept
    ops = plan(state([unused], [claim]), [WEB], now=150, grace=60, ranges=RANGES)
    assert len(ops) == 1
    assert isinstance(ops[0], MarkUsed)
    assert decode_allocation(ops[0].new).unused_since is None


def test_orphan_claims_are_dropped_after_the_grace_period() -> None:
    orphan = Claim("240.240.0.5", WEB, 10.0)
    assert plan(state(claims=[orphan]), [], now=20, grace=60, ranges=RANGES) == []
    ops = plan(state(claims=[orphan]), [], now=70, grace=60, ranges=RANGES)
    assert ops == [DropClaim("240.240.0.5", encode_claim(orphan))]


def test_codec_round_trip_and_rejects() -> None:
    a = Allocation(WEB, ("240.240.0.1", "fd6d:6573:6866:6564::1"), 5.0)
    assert decode_allocation(encode_allocation(a)) == a
    c = Claim("240.240.0.1", WEB, 3.0)
    assert decode_claim(encode_claim(c)) == c
    for bad in (b"nope", b"{}", b'{"schema":1,"kind":"VipAllocation","namespace":"a","name":"b","addresses":["x"]}'):
        with pytest.raises(RecordError):
            decode_allocation(bad)
