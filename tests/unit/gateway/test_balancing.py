"""Pure choices: endpoint order, route order by network and locality, listener plans, stream admission."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.records import Gateway, Locality, Site
from gateway.admission import admit
from gateway.balancing import (
    Close,
    Direct,
    EndpointPicker,
    Open,
    Target,
    ViaGateway,
    desired_listeners,
    plan,
    routes,
)
from gateway.preamble import Request, Status
from tests.pkihelp import export, view

A, B, C = Target("10.0.0.1", 80), Target("10.0.0.2", 80), Target("10.0.0.3", 80)


def test_round_robin_and_recently_refused_last() -> None:
    p = EndpointPicker(penalty=10)
    assert p.order("k", [A, B, C], now=0) == [A, B, C]
    assert p.order("k", [A, B, C], now=0) == [B, C, A]
    p.refused(C, now=1)
    assert p.order("k", [A, B, C], now=2) == [A, B, C]
    assert p.order("k", [A, B, C], now=3) == [A, B, C]  # turn 3 starts at A; C, refused, goes last
    assert p.order("k", [A, B, C], now=4) == [B, A, C]


def test_penalty_expires() -> None:
    p = EndpointPicker(penalty=10)
    p.refused(A, now=0)
    assert p.order("k", [A, B], now=5) == [B, A]
    assert p.order("x", [A, B], now=11) == [A, B]


def _site(name: str, network: str, region: str = "", zone: str = "") -> Site:
    return Site(name, network, Locality(region, zone), gateways=(Gateway("gw", f"192.0.2.{len(name)}"),))


def test_routes_prefer_own_network_then_zone_then_region_then_any() -> None:
    sites = [
        _site("me", "n1", "eu", "eu-1"),
        _site("flat", "n1", "us", "us-1"),
        _site("zone", "n2", "eu", "eu-1"),
        _site("region", "n3", "eu", "eu-2"),
        _site("far", "n4", "ap", "ap-1"),
    ]
    exports = [export(s.name, "ns", "svc", 80) for s in sites if s.name != "me"]
    got = routes(view(sites, exports), "me", "ns", "svc", "tcp")
    assert [type(r) for r in got] == [Direct, ViaGateway, ViaGateway, ViaGateway]
    assert [r.site for r in got] == ["flat", "zone", "region", "far"]


def test_routes_skip_sites_without_ready_endpoints() -> None:
    sites = [_site("me", "n1"), _site("down", "n2"), _site("up", "n3")]
    exports = [export("down", "ns", "svc", 80, ready=False), export("up", "ns", "svc", 80)]
    assert [r.site for r in routes(view(sites, exports), "me", "ns", "svc", "tcp")] == ["up"]
    assert routes(view(sites, exports), "me", "ns", "nope", "tcp") == []


def test_routes_only_to_sites_that_export_the_port_as_the_service_has_it() -> None:
    # MCS: a port name exported with another number (exported later) gets none of that port's traffic.
    import dataclasses

    sites = [_site("me", "n1"), _site("first", "n2"), _site("later", "n3"), _site("other", "n4")]
    first = dataclasses.replace(export("first", "ns", "svc", 42), exported_at=1.0)
    later = dataclasses.replace(export("later", "ns", "svc", 4242), exported_at=2.0)
    other = dataclasses.replace(export("other", "ns", "svc", 4242, port_name="tcp2"), exported_at=3.0)
    v = view(sites, [first, later, other])
    assert [r.site for r in routes(v, "me", "ns", "svc", "tcp")] == ["first"]
    assert [r.site for r in routes(v, "me", "ns", "svc", "tcp2")] == ["other"]
    assert desired_listeners(v, "me") == {("ns", "svc", "tcp"), ("ns", "svc", "tcp2")}


def test_desired_listeners_are_for_services_of_other_sites() -> None:
    sites = [_site("me", "n1"), _site("other", "n2")]
    exports = [export("me", "ns", "mine", 80), export("other", "ns", "theirs", 80)]
    assert desired_listeners(view(sites, exports), "me") == {("ns", "theirs", "tcp")}
    assert desired_listeners(view(sites, exports), "me", include_own=True) == {("ns", "theirs", "tcp"),
                                                                               ("ns", "mine", "tcp")}


def test_plan_closes_then_opens_and_keeps_kernel_chosen_ports() -> None:
    a, b, c = ("ns", "a", "p"), ("ns", "b", "p"), ("ns", "c", "p")
    actual = {a: ("127.0.0.1", 40001), b: ("127.0.0.1", 40002)}
    desired = {a: ("127.0.0.1", 0), c: ("127.0.0.1", 0)}
    assert plan(desired, actual) == [Close(b), Open(c, ("127.0.0.1", 0))]
    assert plan({a: ("127.0.0.2", 0)}, actual) == [Close(a), Close(b), Open(a, ("127.0.0.2", 0))]


def test_admission() -> None:
    v = view([_site("me", "n1")], [export("me", "ns", "svc", 80, endpoint_ports=(8080,)),
                                   export("me", "ns", "down", 80, ready=False)])
    ok = admit(v, "me", Request("ns", "svc", 80))
    assert ok.status is Status.OK
    assert ok.targets == (Target("127.0.0.1", 8080),)
    assert admit(v, "me", Request("ns", "svc", "tcp")).status is Status.OK
    assert admit(v, "me", Request("ns", "svc", 81)).status is Status.NO_SUCH_SERVICE
    assert admit(v, "me", Request("ns", "other", 80)).status is Status.NO_SUCH_SERVICE
    assert admit(v, "me", Request("ns", "down", 80)).status is Status.NO_HEALTHY_ENDPOINT
    assert admit(v, "me", Request("ns", "svc", 80, hostname="web-0")).status is Status.NO_HEALTHY_ENDPOINT
    assert admit(v, "other", Request("ns", "svc", 80)).status is Status.NO_SUCH_SERVICE


def test_view_codec_round_trip() -> None:
    from gateway.workers import decode_view, encode_view

    sites = [_site("me", "n1", "eu", "eu-1"), _site("other", "n2")]
    exports = [export("other", "ns", "svc", 80, endpoint_ports=(8080, 8081))]
    v = view(sites, exports)
    back = decode_view(encode_view(v))
    assert dict(back.sites) == dict(v.sites)
    assert dict(back.exports) == dict(v.exports)


_names = st.sampled_from(["a", "b", "c", "d", "e"])


@settings(deadline=None)  # shared CI machines: a slow example is not a failure
@given(
    st.lists(st.tuples(_names, st.sampled_from(["n1", "n2", "n3"]), st.booleans()), max_size=8,
             unique_by=lambda t: t[0]),
    st.integers(0, 10),
)
def test_routes_never_tunnel_to_our_own_network_and_never_skip_a_flat_endpoint(
    spec: list[tuple[str, str, bool]], turn: int
) -> None:
    sites = [_site("me", "n1")] + [_site(n, net) for n, net, _ in spec]
    exports = [export(n, "ns", "svc", 80, ready=ready) for n, _, ready in spec]
    got = routes(view(sites, exports), "me", "ns", "svc", "tcp", turn=turn)
    nets = {s.name: s.network for s in sites}
    ready = {n for n, _, r in spec if r}
    assert all(r.site in ready for r in got)
    assert all(nets[r.site] == "n1" for r in got if isinstance(r, Direct))
    assert all(nets[r.site] != "n1" for r in got if isinstance(r, ViaGateway))
    kinds = [isinstance(r, Direct) for r in got]
    assert kinds == sorted(kinds, reverse=True)  # every direct route comes before every tunnel
    assert {r.site for r in got} == ready


def test_site_health_marks_a_failing_gateway_down_until_it_works_or_the_hold_passes() -> None:
    from gateway.balancing import SiteHealth

    h = SiteHealth(hold=30)
    h.failed("west", now=100)
    assert h.down(now=101) == {"west"}
    h.succeeded("west")
    assert h.down(now=102) == frozenset()
    h.failed("west", now=200)
    assert h.down(now=229) == {"west"}
    assert h.down(now=230) == frozenset()
