"""A registry client's link health and its metrics (pure: no etcd)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from federation.core.backoff import REGISTRY_CAP, registry_backoff
from federation.registry.link import Link, Links


def test_a_link_says_since_when_it_is_down_and_forgets_the_error_once_a_call_works() -> None:
    link = Link("vip-allocator", "127.0.0.1:1")
    assert link.reachable is None
    assert link.down_for() == 0.0
    link.failed("etcd at 127.0.0.1:1: UNAVAILABLE")
    since = link.since
    link.failed("again")
    assert link.since == since  # still the time it went down
    assert link.down_for(since + 5) == 5
    assert link.describe()["error"] == "again"
    link.ok()
    assert link.reachable is True
    assert link.error is None
    assert link.down_for() == 0.0


def test_links_export_reachability_and_failovers_per_client() -> None:
    links = Links()
    a, b = links.add(Link("mirror")), links.add(Link("vip-allocator"))
    a.ok()
    b.failed("down")
    b.failovers = 2
    registry = CollectorRegistry()
    links.register(registry)
    assert registry.get_sample_value("meshfed_registry_reachable", {"client": "mirror"}) == 1
    assert registry.get_sample_value("meshfed_registry_reachable", {"client": "vip-allocator"}) == 0
    assert registry.get_sample_value("meshfed_registry_failovers_total", {"client": "vip-allocator"}) == 2
    assert [link.name for link in links.unreachable()] == ["vip-allocator"]


def test_the_registry_backoff_never_waits_longer_than_its_cap() -> None:
    backoff = registry_backoff()
    delays = [backoff.next() for _ in range(40)]
    assert max(delays) <= REGISTRY_CAP <= 2.0
    assert min(delays[10:]) >= REGISTRY_CAP / 2  # jittered within [cap/2, cap] once grown
    assert len(set(delays)) > 30
