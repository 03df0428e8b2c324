"""The pure VIP reconcile plan."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from federation.sources.vm.addressing import Vip, outside, plan, range_addresses


def ip(text: str) -> Vip:
    return ipaddress.ip_address(text)


def test_adds_missing_removes_extra_keeps_link_local() -> None:
    p = plan({ip("240.240.0.1"), ip("240.240.0.2"), ip("fd6d::1")},
             [(ip("240.240.0.2"), 32), (ip("240.240.0.9"), 32), (ip("fe80::1"), 64)])
    assert p.add == (ip("240.240.0.1"), ip("fd6d::1"))
    assert p.remove == ((ip("240.240.0.9"), 32),)


def test_wrong_prefix_is_replaced_by_host_address() -> None:
    p = plan({ip("240.240.0.1")}, [(ip("240.240.0.1"), 24)])
    assert p.add == (ip("240.240.0.1"),)
    assert p.remove == ((ip("240.240.0.1"), 24),)


def test_converged_interface_needs_nothing() -> None:
    assert not plan({ip("240.240.0.1")}, [(ip("240.240.0.1"), 32), (ip("fe80::1"), 64)])


addresses = st.builds(ipaddress.IPv4Address, st.integers(0xF0F00000, 0xF0F0000F)) | st.builds(
    ipaddress.IPv6Address, st.integers(1, 16))


@given(st.sets(addresses), st.lists(st.tuples(addresses, st.sampled_from([24, 32, 64, 128]))))
def test_applying_the_plan_gives_exactly_the_desired_host_addresses(desired: set[Vip],
                                                                     actual: list[tuple[Vip, int]]) -> None:
    actual = [(a, min(p, a.max_prefixlen)) for a, p in actual]
    p = plan(desired, actual)
    after = list(actual)
    for r in p.remove:
        after.remove(r)
    after += [(a, a.max_prefixlen) for a in p.add]
    assert sorted(after, key=str) == sorted(((a, a.max_prefixlen) for a in desired), key=str)
    assert not plan(desired, after)


def test_capture_mode_holds_one_address_per_range_with_its_prefix() -> None:
    from federation.sources.vm.addressing import range_addresses

    ranges = range_addresses(["240.240.0.0/16", "fd6d:6573:6866:6564::/64"])
    assert ranges == {ip("240.240.0.1"): 16, ip("fd6d:6573:6866:6564::1"): 64}
    # From host addresses of per-port mode to the range addresses: the VIPs go, the ranges come.
    p = plan(ranges, [(ip("240.240.0.7"), 32), (ip("240.240.0.1"), 32)], ranges)
    assert p.add == (ip("240.240.0.1"), ip("fd6d:6573:6866:6564::1"))
    assert p.remove == ((ip("240.240.0.1"), 32), (ip("240.240.0.7"), 32))
    assert not plan(ranges, [(a, n) for a, n in ranges.items()], ranges)


def test_capture_mode_holds_the_ranges_and_every_address_outside_them_one_by_one() -> None:
    ranges = range_addresses(["240.240.0.0/16", "fd6d:6573:6866:6564::/64"])
    vips = [ipaddress.ip_address(a) for a in ("240.240.0.7", "240.241.0.9", "fd6d:6573:6866:6564::7", "fd00::9")]
    assert outside(vips, ranges) == {ipaddress.ip_address("240.241.0.9"), ipaddress.ip_address("fd00::9")}
    assert outside(vips, {}) == frozenset(vips)
