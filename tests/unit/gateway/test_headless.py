"""Endpoint listeners: one per remote headless endpoint and port, bound at its address where it is held,
followed change by change as a fresh plan would have them; the far side picks the endpoint by its name."""

from __future__ import annotations

import ipaddress

from hypothesis import example, given, settings
from hypothesis import strategies as st

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.endpoints import EndpointAllocator
from federation.core.keys import Keys
from federation.core.records import Endpoint, Locality, Protocol, ServiceExport, ServicePort, ServiceType, Site
from federation.core.view import MeshView
from gateway.admission import admit
from gateway.balancing import Placement, Target
from gateway.headless import CAPTURED, HostPlan, wanted_of
from gateway.preamble import Request, Status

KEYS = Keys()
FALLBACK = ("127.0.0.1", 0)


def _site(name: str, network: str) -> Site:
    return Site(name=name, network=network, locality=Locality("eu", "a"))


def _db(site: str, hosts: list[str | None], ports: tuple[ServicePort, ...] = (ServicePort("pg", 5432),),
        name: str = "db") -> ServiceExport:
    eps = tuple(Endpoint((f"10.9.0.{i + 1}",), hostname=h) for i, h in enumerate(hosts))
    return ServiceExport(site, "shop", name, ports, type=ServiceType.HEADLESS, endpoints=eps)


def _view(*exports: ServiceExport) -> MeshView:
    return MeshView(sites={"me": _site("me", "net-a"), "far": _site("far", "net-b")},
                    exports={(e.site, e.namespace, e.name): e for e in exports})


def test_a_listener_per_remote_endpoint_and_tcp_port_at_its_address_where_held() -> None:
    v = _view(_db("far", ["db-0", "db-1"], (ServicePort("pg", 5432), ServicePort("dns", 53, Protocol.UDP))))
    table = EndpointAllocator(["240.241.0.0/16"], "me", "net-a").update(v)
    remote = table[("shop", "db")]
    held = frozenset({remote[0].address})
    wanted = wanted_of(v, ("shop", "db"), remote, Placement(FALLBACK, {}, held))
    assert wanted == {
        ("shop", "db", "pg", "far", "db-0"): (remote[0].address, 5432),  # on the VM's interface: its address
        ("shop", "db", "pg", "far", "db-1"): FALLBACK,  # not held (Kubernetes, or not yet): a loopback port
    }


def test_in_capture_mode_an_endpoint_in_a_captured_range_gets_no_listener_of_its_own() -> None:
    v = _view(_db("far", ["db-0", "db-1"]))
    table = EndpointAllocator(["240.241.0.0/16"], "me", "net-a").update(v)
    remote = table[("shop", "db")]
    captured = [ipaddress.ip_network("240.241.0.0/16")]
    wanted = wanted_of(v, ("shop", "db"), remote, Placement(FALLBACK, {}, frozenset()), captured)
    assert wanted == {("shop", "db", "pg", "far", "db-0"): (CAPTURED, 5432),
                      ("shop", "db", "pg", "far", "db-1"): (CAPTURED, 5432)}
    other = [ipaddress.ip_network("240.240.0.0/16")]  # only the VIP range captured: listeners as before
    assert set(wanted_of(v, ("shop", "db"), remote, Placement(FALLBACK, {}, frozenset()), other).values()) == {FALLBACK}


def test_the_far_gateway_sends_a_named_request_to_that_endpoint_only() -> None:
    v = _view(_db("far", ["db-0", None, "db-2"]))
    got = admit(v, "far", Request("shop", "db", "pg", hostname="db-2"))
    assert got.status is Status.OK
    assert got.targets == (Target("10.9.0.3", 5432),)
    unnamed = admit(v, "far", Request("shop", "db", "pg", hostname="10-9-0-2"))  # named by its address in DNS
    assert unnamed.targets == (Target("10.9.0.2", 5432),)
    assert admit(v, "far", Request("shop", "db", "pg", hostname="db-7")).status is Status.NO_HEALTHY_ENDPOINT


_ops = st.lists(st.one_of(
    st.tuples(st.just("export"), st.sampled_from(("db", "mq")), st.sets(st.integers(0, 3), max_size=3),
              st.sampled_from((5432, 5433))),
    st.tuples(st.just("unexport"), st.sampled_from(("db", "mq"))),
    st.tuples(st.just("hold"), st.sets(st.integers(0, 6), max_size=4)),
), min_size=1, max_size=20)


@settings(max_examples=120)
@given(_ops, st.booleans())
@example([("hold", {1, 2, 3, 4, 5, 6}), ("export", "db", {0}, 5432), ("export", "db", {0}, 5433)], False)  # a port moves
def test_following_changes_equals_a_fresh_plan(ops: list[tuple[object, ...]], capture: bool) -> None:
    cat = Catalog(KEYS)
    cat.put(KEYS.site("me"), encode_site(_site("me", "net-a")), 1)
    cat.put(KEYS.site("far"), encode_site(_site("far", "net-b")), 2)
    book = EndpointAllocator(["240.241.0.0/29"], "me", "net-a")
    ranges = ("240.241.0.4/30",) if capture else ()  # half the range captured, half held or not
    plan = HostPlan(ranges)
    nets = [ipaddress.ip_network(r) for r in ranges]
    listening: dict[tuple[str, str, str, str, str], tuple[str, int]] = {}
    held: frozenset[str] = frozenset()
    for rev, op in enumerate(ops, 3):
        if op[0] == "export":
            _, name, hosts, port = op
            e = _db("far", [f"p-{h}" for h in sorted(hosts)], (ServicePort("pg", int(port)),), str(name))  # type: ignore[call-overload]
            cat.put(KEYS.service("far", "shop", str(name)), encode_export(e), rev)
        elif op[0] == "unexport":
            cat.delete(KEYS.service("far", "shop", str(op[1])), rev)
        else:
            held = frozenset(f"240.241.0.{i}" for i in op[1])  # type: ignore[attr-defined]
        view = cat.view()
        table = book.update(view)
        placement = Placement(FALLBACK, {}, held)
        check, wanted = plan.step(table, view, placement)
        for key in check:
            listening.pop(key, None)
        listening.update(wanted)
        fresh = {k: b for svc, remote in table.items() for k, b in wanted_of(view, svc, remote, placement, nets).items()}
        assert listening == fresh
