"""The wire-level fast path gives the dnspython path's bytes exactly, and no query grows any table."""

from __future__ import annotations

import gc
import random
import struct
import tracemalloc

import dns.flags
import dns.message
import dns.name
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.dns.answering import Answerer
from federation.dns.fastpath import FAST_TYPES, MEMO_MAX, FastPath
from federation.dns.nodes import Zone, name_of
from federation.dns.server import DnsServer
from federation.dns.settings import DnsSettings
from federation.dns.zone import ZoneBuilder
from tests.dnshelp import ZONE, big_view, export, site, view

VIEW, VIPS = big_view(400, seed=7)
BUILDER = ZoneBuilder(ZONE, local_site="east")
ZONE_DATA: Zone = BUILDER.build(VIEW, frozenset({"far"}), (VIPS))
ANSWERER = Answerer(ZONE_DATA.origin, forwarding=False)
FAST = FastPath(ANSWERER)
FAST.update(ZONE_DATA)
NAMES = sorted(ZONE_DATA.nodes)
ANSWERS = [(name, t) for name in NAMES for t in ZONE_DATA.nodes[name].types() if t in FAST_TYPES]


def _random_case(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.3 else c for c in text)


def _random_query(rng: random.Random) -> bytes:
    if rng.random() < 0.7:
        labels, rdtype = rng.choice(ANSWERS)
    else:
        labels, rdtype = rng.choice(NAMES), rng.choice([*FAST_TYPES, 16, 6, 15, 255])
    name = name_of(labels).to_text()
    if rng.random() < 0.5:
        name = _random_case(name, rng)
    edns = rng.choice([-1, 0])
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=rng.choice([512, 1232, 4096, 600]),
                               want_dnssec=edns == 0 and rng.random() < 0.3)
    q.flags = rng.choice([0, dns.flags.RD, dns.flags.RD | dns.flags.CD, dns.flags.AD])
    return q.to_wire()


@pytest.mark.parametrize("forwarding", [False, True])
def test_fast_and_dnspython_paths_give_byte_identical_answers(forwarding: bool) -> None:
    answerer = Answerer(ZONE_DATA.origin, forwarding=forwarding)
    fast_path = FastPath(answerer)
    fast_path.update(ZONE_DATA)
    rng = random.Random(1645)
    fast_answers = 0
    for _ in range(6000):
        wire = _random_query(rng)
        udp = rng.random() < 0.7
        fast = fast_path.answer(wire, udp)
        if fast is None:
            continue
        fast_answers += 1
        assert fast == answerer.handle(wire, ZONE_DATA, udp=udp), dns.message.from_wire(wire).question
    assert fast_answers > 3000  # most sampled questions are fast-path questions


def test_fast_path_declines_what_it_does_not_handle() -> None:
    name = "svc1.ns1.svc.clusterset.local"
    good = dns.message.make_query(name, "A").to_wire()
    assert FAST.answer(good, True) is not None
    assert FAST.answer(dns.message.make_query(name, "TXT").to_wire(), True) is None
    assert FAST.answer(dns.message.make_query("nope." + name, "A").to_wire(), True) is None
    assert FAST.answer(good[:-1], True) is None
    assert FAST.answer(good + b"\x00", True) is None
    assert FAST.answer(good[:12] + b"\xc0\x0c\x00\x01\x00\x01", True) is None
    notify = bytearray(good)
    notify[2] |= 0x20  # opcode NOTIFY
    assert FAST.answer(bytes(notify), True) is None
    with_option = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.GenericOption(10, b"12345678")])
    assert FAST.answer(with_option.to_wire(), True) is None


def test_fast_path_follows_updates_and_forgets_removed_services() -> None:
    fast = FastPath(ANSWERER)
    fast.update(ZONE_DATA)
    assert len(fast) == 0  # nothing is encoded until asked
    for labels, rdtype in ANSWERS[:200]:
        wire = dns.message.make_query(dns.name.Name([*labels, b""]), rdtype).to_wire()
        assert fast.answer(wire, True) == ANSWERER.handle(wire, ZONE_DATA, udp=True)
    assert fast.answer(dns.message.make_query("svc1.ns1.svc.clusterset.local", "A").to_wire(), True) is not None
    before = len(fast)
    assert 0 < before <= 201
    smaller = dict(VIEW.exports)
    for key in [k for k in smaller if k[2] == "svc1"]:
        del smaller[key]
    zone = ZoneBuilder(ZONE, local_site="east").build(
        VIEW.__class__(VIEW.sites, smaller, 2), frozenset({"far"}), (VIPS))
    fast.update(zone)
    assert len(fast) < before
    assert fast.answer(dns.message.make_query("svc1.ns1.svc.clusterset.local", "A").to_wire(), True) is None


def test_a_flood_of_random_names_grows_nothing() -> None:
    server = DnsServer(DnsSettings(forwarding=False), local_site="east")
    server.update(VIEW, frozenset())
    rng = random.Random(8482)

    def flood(n: int) -> None:
        for _ in range(n):
            label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(rng.randint(1, 40)))
            name = rng.choice([f"{label}.ns1.svc.{ZONE}", f"{label}.{ZONE}", f"{label}.example.org"])
            wire = dns.message.make_query(name, rng.choice(["A", "AAAA", "SRV", "PTR"])).to_wire()
            assert server.answer_sync(wire, udp=True) is not None

    table = len(server.fast)
    memo = server.fast.memo_size
    nodes = len(server.zone.nodes) if server.zone else 0
    flood(500)
    tracemalloc.start()
    try:
        gc.collect()
        start, _ = tracemalloc.get_traced_memory()
        flood(2000)
        gc.collect()  # dnspython's renderer leaves cycles behind: garbage, not growth
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(server.fast) == table
    assert server.fast.memo_size == memo
    assert server.zone is not None
    assert len(server.zone.nodes) == nodes
    assert end - start < 128 * 1024, f"memory grew by {end - start} bytes over 2000 random names"


def test_case_variants_of_real_names_fill_the_response_memo_only_up_to_its_bound() -> None:
    fast = FastPath(ANSWERER)
    fast.update(ZONE_DATA)
    base = bytearray(dns.message.make_query("_http._tcp.svc1.ns1.svc.clusterset.local", "SRV").to_wire())
    letters = [i for i in range(13, len(base) - 5) if chr(base[i]).isalpha()]
    rng = random.Random(20)
    for i in range(MEMO_MAX + 5000):
        wire = bytearray(base)
        bits = rng.getrandbits(len(letters))
        for j, pos in enumerate(letters):
            if bits >> j & 1:
                wire[pos] ^= 0x20
        wire[0:2] = (i & 0xFFFF).to_bytes(2, "big")
        assert fast.answer(bytes(wire), True) is not None
        assert fast.memo_size <= MEMO_MAX
    assert fast.memo_size > 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_escape_the_request_path(data: bytes) -> None:
    _check_request_path(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8),
       st.integers(0, 40))
def test_fuzz_mutated_queries_never_escape_the_request_path(
    seed: int, flips: list[tuple[int, int]], cut: int
) -> None:
    wire = bytearray(_random_query(random.Random(seed)))
    for pos, value in flips:
        if pos < len(wire):
            wire[pos] = value
    _check_request_path(bytes(wire[: max(0, len(wire) - cut)]) if cut % 3 == 0 else bytes(wire))


def _check_request_path(data: bytes) -> None:
    for udp in (True, False):
        fast = FAST.answer(data, udp)
        slow = ANSWERER.handle(data, ZONE_DATA, udp=udp)  # must not raise on any input
        if fast is not None:
            assert fast == slow
        if isinstance(slow, bytes):
            assert slow[:2] == data[:2]
            assert slow[2] & 0x80
            if udp:
                assert len(slow) <= 1232
            if len(data) >= 12 and struct.unpack_from("!H", data, 10)[0] == 0 and udp:
                assert len(slow) <= 512  # no OPT record in the query: the classic limit


def test_truncated_answers_are_byte_identical_too() -> None:
    addrs = [f"10.9.{i // 200}.{i % 200 + 1}" for i in range(60)] + [f"fd00::{i:x}" for i in range(1, 9)]
    v = view([site("east")], [
        export("east", "shop", "big", addrs, headless=True, hostnames=[f"h{i}" for i in range(len(addrs))]),
        export("east", "shop", "mid", addrs[:10] + addrs[-2:], headless=True),
    ])
    zone = ZoneBuilder(ZONE, local_site="east").build(v, frozenset(), {})
    fast = FastPath(ANSWERER)
    fast.update(zone)
    seen_tc = seen_partial_glue = 0
    questions = [(f"{svc}.shop.svc.clusterset.local", t) for svc in ("big", "mid") for t in ("A", "AAAA")]
    questions += [(f"_http._tcp.{svc}.shop.svc.clusterset.local", "SRV") for svc in ("big", "mid")]
    for name, rdtype in questions:
        for edns, payload in [(-1, 512), (0, 512), (0, 1232), (0, 600), (0, 800), (0, 1000), (0, 4096)]:
            for udp in (True, False):
                wire = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload).to_wire()
                out = fast.answer(wire, udp)
                assert out is not None
                assert out == ANSWERER.handle(wire, zone, udp=udp)
                msg = dns.message.from_wire(out)
                seen_tc += bool(msg.flags & dns.flags.TC)
                seen_partial_glue += bool(msg.answer and msg.additional and len(msg.additional) < 12
                                          and rdtype == "SRV")
    assert seen_tc
    assert seen_partial_glue
