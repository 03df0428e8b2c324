"""Per-endpoint addresses of remote headless endpoints: who gets one, stability, a full range, incrementality."""

from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.endpoints import EndpointAllocator, hostname_of
from federation.core.keys import Keys
from federation.core.records import Endpoint, Locality, ServiceExport, ServicePort, ServiceType, Site
from federation.core.view import MeshView

KEYS = Keys()
RANGE = "240.241.0.0/16"


def _site(name: str, network: str) -> Site:
    return Site(name=name, network=network, locality=Locality("eu", "a"))


def _export(site: str, name: str, hosts: list[str | None], headless: bool = True) -> ServiceExport:
    eps = tuple(Endpoint((f"10.{len(site)}.0.{i + 1}",), hostname=h) for i, h in enumerate(hosts))
    return ServiceExport(site, "shop", name, (ServicePort("tcp", 5432),),
                         type=ServiceType.HEADLESS if headless else ServiceType.CLUSTER_SET_IP, endpoints=eps)


def _view(*exports: ServiceExport, networks: dict[str, str] | None = None) -> MeshView:
    nets = networks or {"west": "net-w", "east": "net-e", "near": "net-w"}
    return MeshView(sites={s: _site(s, n) for s, n in nets.items()},
                    exports={(e.site, e.namespace, e.name): e for e in exports})


def test_only_headless_endpoints_of_other_networks_get_an_address() -> None:
    view = _view(_export("east", "db", ["db-0", None]), _export("near", "db", ["db-9"]),
                 _export("west", "db", ["db-5"]), _export("east", "web", ["w-0"], headless=False))
    table = EndpointAllocator([RANGE], "west", "net-w").update(view)
    assert set(table) == {("shop", "db")}
    remote = table[("shop", "db")]
    assert [(r.site, r.hostname) for r in remote] == [("east", "db-0"), ("east", "10-4-0-2")]  # unnamed: dashed
    for r in remote:
        assert ipaddress.ip_address(r.address) in ipaddress.ip_network(RANGE)
    assert len({r.address for r in remote}) == 2
    assert table.addresses() == {("shop", "db"): tuple(r.address for r in remote)}


def test_addresses_are_deterministic_and_kept_while_the_endpoint_exists() -> None:
    one = _view(_export("east", "db", ["db-0", "db-1"]))
    two = _view(_export("east", "db", ["db-0", "db-1", "db-2"]), _export("east", "cache", ["c-0"]))
    book = EndpointAllocator([RANGE], "west", "net-w")
    first = {r.hostname: r.address for r in book.update(one)[("shop", "db")]}
    again = {r.hostname: r.address for r in EndpointAllocator([RANGE], "west", "net-w").update(one)[("shop", "db")]}
    assert first == again  # another agent, or this one restarted, answers the same
    later = {r.hostname: r.address for r in book.update(two)[("shop", "db")]}
    assert {h: later[h] for h in first} == first  # a new endpoint moves none of the others


def test_a_full_range_leaves_endpoints_out_and_never_gives_one_address_twice() -> None:
    view = _view(_export("east", "db", [f"db-{i}" for i in range(5)]))
    table = EndpointAllocator(["240.241.0.0/30"], "west", "net-w").update(view)  # two usable addresses
    remote = table[("shop", "db")]
    assert len(remote) == 2
    assert {r.address for r in remote} == {"240.241.0.1", "240.241.0.2"}
    assert table.unplaced == 3


def test_an_unchanged_service_keeps_its_tuple_and_a_gone_one_frees_its_addresses() -> None:
    cat = Catalog(KEYS)
    for rev, (s, net) in enumerate((("west", "net-w"), ("east", "net-e")), 1):
        cat.put(KEYS.site(s), encode_site(_site(s, net)), rev)
    cat.put(KEYS.service("east", "shop", "db"), encode_export(_export("east", "db", ["db-0"])), 3)
    cat.put(KEYS.service("east", "shop", "cache"), encode_export(_export("east", "cache", ["c-0"])), 4)
    book = EndpointAllocator(["240.241.0.0/30"], "west", "net-w")
    before = book.update(cat.view())
    cat.put(KEYS.service("east", "shop", "db"), encode_export(_export("east", "db", ["db-0", "db-1"])), 5)
    after = book.update(cat.view())
    assert after[("shop", "cache")] is before[("shop", "cache")]
    assert after.unplaced == 1  # two usable addresses, three endpoints
    cat.delete(KEYS.service("east", "shop", "cache"), 6)
    cat.put(KEYS.service("east", "shop", "db"), encode_export(_export("east", "db", ["db-0", "db-2"])), 7)
    last = book.update(cat.view())
    assert set(last) == {("shop", "db")}
    assert len(last[("shop", "db")]) == 2
    assert last.unplaced == 0


def test_an_endpoint_without_a_hostname_is_named_by_its_address() -> None:
    assert hostname_of(Endpoint(("10.1.0.2",))) == "10-1-0-2"
    assert hostname_of(Endpoint(("fd00::2",))) == "fd00--2"
    assert hostname_of(Endpoint(("10.1.0.2",), hostname="db-0")) == "db-0"


_ops = st.lists(st.one_of(
    st.tuples(st.just("export"), st.sampled_from(("east", "far", "west")), st.sampled_from(("db", "mq")),
              st.sets(st.integers(0, 5), max_size=4), st.booleans()),
    st.tuples(st.just("unexport"), st.sampled_from(("east", "far", "west")), st.sampled_from(("db", "mq"))),
    st.tuples(st.just("network"), st.sampled_from(("east", "far")), st.sampled_from(("net-w", "net-x"))),
), max_size=25)


@settings(max_examples=150)
@given(_ops)
def test_incremental_updates_keep_every_invariant(ops: list[tuple[object, ...]]) -> None:
    """Whatever the changes: every wanted endpoint has one address of its own in the range while it fits, an
    endpoint keeps its address while it exists, and the table covers exactly the wanted endpoints."""
    cat = Catalog(KEYS)
    networks = {"west": "net-w", "east": "net-x", "far": "net-x"}
    for rev, (s, net) in enumerate(networks.items(), 1):
        cat.put(KEYS.site(s), encode_site(_site(s, net)), rev)
    book = EndpointAllocator(["240.241.0.0/29"], "west", "net-w")  # six addresses: collisions and a full range
    held: dict[tuple[str, str, str], str] = {}
    for rev, op in enumerate(ops, 10):
        if op[0] == "export":
            _, s, name, hosts, headless = op
            e = _export(str(s), str(name), [f"p-{h}" for h in sorted(hosts)], bool(headless))  # type: ignore[call-overload]
            cat.put(KEYS.service(str(s), "shop", str(name)), encode_export(e), rev)
        elif op[0] == "unexport":
            cat.delete(KEYS.service(str(op[1]), "shop", str(op[2])), rev)
        else:
            networks[str(op[1])] = str(op[2])
            cat.put(KEYS.site(str(op[1])), encode_site(_site(str(op[1]), str(op[2]))), rev)
        view = cat.view()
        table = book.update(view)
        wanted = {(svc.name, e.site, hostname_of(ep)) for svc in view.services().values()
                  if svc.type is ServiceType.HEADLESS for e in svc.exports
                  if e.site != "west" and networks[e.site] != "net-w" for ep in e.endpoints}
        got = {(k[1], r.site, r.hostname): r.address for k, rs in table.items() for r in rs}
        assert set(got) <= wanted
        assert len(got) + table.unplaced == len(wanted)
        assert len(got) == min(len(wanted), 6)  # endpoints waiting for an address take freed ones
        assert len(set(got.values())) == len(got)
        for key, address in got.items():
            assert ipaddress.ip_address(address) in ipaddress.ip_network("240.241.0.0/29")
            assert held.get(key, address) == address, (key, held[key], address)
        held = got


def test_the_view_before_the_sync_changes_nothing() -> None:
    book = EndpointAllocator([RANGE], "west", "net-w")
    table = book.update(_view(_export("east", "db", ["db-0"])))
    assert book.update(MeshView.before_sync()) is table
    assert dataclasses.is_dataclass(table[("shop", "db")][0])


def test_an_endpoint_left_out_of_a_full_range_takes_an_address_freed_by_another_service() -> None:
    cat = Catalog(KEYS)
    for rev, (s, net) in enumerate((("west", "net-w"), ("east", "net-e")), 1):
        cat.put(KEYS.site(s), encode_site(_site(s, net)), rev)
    cat.put(KEYS.service("east", "shop", "db"), encode_export(_export("east", "db", ["db-0", "db-1"])), 3)
    cat.put(KEYS.service("east", "shop", "mq"), encode_export(_export("east", "mq", ["mq-0"])), 4)
    book = EndpointAllocator(["240.241.0.0/30"], "west", "net-w")  # two usable addresses
    assert book.update(cat.view()).unplaced == 1
    cat.delete(KEYS.service("east", "shop", "db"), 5)  # mq is not in this change, and waits
    table = book.update(cat.view())
    assert [r.hostname for r in table[("shop", "mq")]] == ["mq-0"]
    assert table.unplaced == 0


def test_a_table_names_the_services_changed_since_an_earlier_one() -> None:
    cat = Catalog(KEYS)
    for rev, (s, net) in enumerate((("west", "net-w"), ("east", "net-e")), 1):
        cat.put(KEYS.site(s), encode_site(_site(s, net)), rev)
    cat.put(KEYS.service("east", "shop", "db"), encode_export(_export("east", "db", ["db-0"])), 3)
    cat.put(KEYS.service("east", "shop", "mq"), encode_export(_export("east", "mq", ["mq-0"])), 4)
    book = EndpointAllocator([RANGE], "west", "net-w")
    first = book.update(cat.view())
    cat.put(KEYS.service("east", "shop", "db"), encode_export(_export("east", "db", ["db-0", "db-1"])), 5)
    second = book.update(cat.view())
    cat.put(KEYS.service("east", "shop", "web"), encode_export(_export("east", "web", ["w-0"], headless=False)), 6)
    third = book.update(cat.view())  # nothing headless changed: the same table
    cat.delete(KEYS.service("east", "shop", "mq"), 7)
    fourth = book.update(cat.view())
    assert third is second
    assert second.changes_since(first) == {("shop", "db")}
    assert fourth.changes_since(first) == {("shop", "db"), ("shop", "mq")}
    assert fourth.changes_since(fourth) == frozenset()
    assert first.changes_since(fourth) is None  # backwards: not known
    assert fourth.changes_since(EndpointAllocator([RANGE], "west", "net-w").update(cat.view())) is None
    assert fourth.far(("shop", "db")) == {"east"}
    assert fourth.far(("shop", "mq")) == frozenset()
