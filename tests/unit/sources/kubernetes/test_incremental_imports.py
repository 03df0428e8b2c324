"""The incremental import plan (issue 11): on random event sequences it plans what a fresh full plan plans,
and a change computes only the services it touched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import immutables
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from federation.core.records import ServicePort, ServiceType
from federation.sources.kubernetes.importing import (
    Create,
    ImportIndex,
    Inputs,
    Op,
    Owned,
    Patch,
    plan_imports,
)
from federation.sources.kubernetes.replanning import ClusterIps, ImportPlanner
from tests.unit.sources.kubernetes.test_importing import OWNED, apply
from tests.util import export, site

KEYS = Keys()
SITES = ("here", "near", "far", "farther")
SERVICES = ("web", "db", "cache")
NETWORKS = ("net-a", "net-b")
PORTS = {0: (ServicePort("http", 8080),), 1: (ServicePort("http", 8080), ServicePort("grpc", 9090)),
         2: (ServicePort("http", 8081),)}

_export = st.tuples(st.just("export"), st.sampled_from(SITES[1:]), st.sampled_from(SERVICES),
                    st.integers(0, 3), st.sampled_from(sorted(PORTS)), st.booleans())
_unexport = st.tuples(st.just("unexport"), st.sampled_from(SITES[1:]), st.sampled_from(SERVICES))
_site = st.tuples(st.just("site"), st.sampled_from(SITES[1:]), st.sampled_from(NETWORKS), st.booleans())
_listener = st.tuples(st.just("listener"), st.sampled_from(SERVICES), st.booleans())
_tamper = st.tuples(st.just("tamper"), st.sampled_from(SERVICES))
_events = st.lists(st.one_of(_export, _unexport, _site, _listener, _tamper), min_size=1, max_size=25)


def _cluster_ips(ops: list[Op], state: Owned, serial: list[int]) -> Owned:
    """`apply`, and the API server's part: a created ClusterIP Service gets a cluster IP."""
    state = apply(ops, state)
    services = dict(state.services)
    for op in ops:
        if isinstance(op, Create) and op.resource == "services":
            k = (op.obj["metadata"]["namespace"], op.obj["metadata"]["name"])
            spec = dict(services[k].get("spec") or {})
            if "clusterIP" not in spec:
                serial[0] += 1
                spec["clusterIP"] = f"10.96.0.{serial[0] % 250 + 1}"
                services[k] = {**services[k], "spec": spec}
    return Owned(services, state.serviceimports, state.endpointslices)


def _touched_objects(ops: list[Op]) -> set[tuple[str, tuple[str, str]]]:
    out = set()
    for op in ops:
        if isinstance(op, Create):
            out.add((op.resource, (op.obj["metadata"]["namespace"], op.obj["metadata"]["name"])))
        else:
            out.add((op.resource, (op.namespace, op.name)))
    return out


@settings(max_examples=150, deadline=None)
@given(_events)
def test_following_events_plans_what_a_fresh_full_plan_plans(events: list[tuple[Any, ...]]) -> None:
    cat = Catalog(KEYS)
    for rev, name in enumerate(SITES, 1):
        cat.put(KEYS.site(name), encode_site(site(name, "net-a" if name in ("here", "near") else "net-b")), rev)
    listeners: immutables.Map[tuple[str, str, str], tuple[str, int]] = immutables.Map()
    planner = ImportPlanner()
    state, serial = Owned(), [0]
    published: list[Mapping[tuple[str, str], str] | None] = [None]

    def target(ns: str, name: str, port: str) -> tuple[str, int] | None:
        return listeners.get((ns, name, port))

    def step() -> None:
        nonlocal state
        for _ in range(3):  # a pass, then the passes its own writes wake (the new cluster IPs)
            view = cat.view()
            own = view.sites["here"]
            inputs = Inputs(view, own, state, target, OWNED)
            fresh = plan_imports(view, own, state, target, OWNED)
            ops = planner.plan(inputs, listeners, {})
            assert ops == fresh
            full = ImportIndex()
            full.apply(inputs)
            assert planner.index.desired() == full.desired()
            state = _cluster_ips(ops, state, serial)
            for resource, k in _touched_objects(ops):
                planner.touch(resource, k)
            ips = planner.cluster_ips(state.services, OWNED)
            fresh_ips = ClusterIps().update(state.services, None, OWNED)
            if ips is not None:
                published[0] = ips
            assert published[0] == fresh_ips
            if not ops:
                break

    step()
    for rev, event in enumerate(events, 10):
        kind = event[0]
        if kind == "export":
            _, where, name, endpoints, ports, headless = event
            e = export(where, name, addresses=tuple(f"10.{SITES.index(where)}.0.{i + 1}" for i in range(endpoints)),
                       ports=PORTS[ports], type=ServiceType.HEADLESS if headless else ServiceType.CLUSTER_SET_IP)
            cat.put(KEYS.service(where, "shop", name), encode_export(e), rev)
        elif kind == "unexport":
            cat.delete(KEYS.service(event[1], "shop", event[2]), rev)
        elif kind == "site":
            _, where, network, present = event
            if present:
                cat.put(KEYS.site(where), encode_site(site(where, network, zone=f"z-{network}")), rev)
            else:
                cat.delete(KEYS.site(where), rev)
        elif kind == "listener":
            _, name, present = event
            key = ("shop", name, "http")
            listeners = listeners.set(key, ("10.244.0.7", 20000 + SERVICES.index(name))) if present \
                else listeners.delete(key) if key in listeners else listeners
        else:  # someone deletes an owned object behind the agent's back; the watch says which
            k = ("shop", event[1])
            if k in state.serviceimports:
                imports = dict(state.serviceimports)
                del imports[k]
                state = Owned(state.services, imports, state.endpointslices)
                planner.touch("serviceimports", k)
        step()


def test_one_export_change_computes_that_service_only() -> None:
    cat = Catalog(KEYS)
    for rev, name in enumerate(SITES, 1):
        cat.put(KEYS.site(name), encode_site(site(name, "net-a" if name == "here" else "net-b")), rev)
    rev = 10
    for name in ("web", "db", "cache", "queue"):
        for where in ("near", "far"):
            rev += 1
            cat.put(KEYS.service(where, "shop", name), encode_export(export(where, name)), rev)
    planner = ImportPlanner()
    listeners = immutables.Map({("shop", n, "http"): ("10.244.0.7", 20000) for n in ("web", "db", "cache", "queue")})
    view = cat.view()

    def target(ns: str, name: str, port: str) -> tuple[str, int] | None:
        return listeners.get((ns, name, port))

    state = Owned()
    for _ in range(2):  # the first pass creates; the second writes the ServiceImports' status (create drops it)
        ops = planner.plan(Inputs(view, view.sites["here"], state, target, OWNED), listeners, {})
        state = apply(ops, state)
        for resource, k in _touched_objects(ops):
            planner.touch(resource, k)
    assert planner.plan(Inputs(view, view.sites["here"], state, target, OWNED), listeners, {}) == []
    computed, sliced = planner.index.computed, planner.index.sliced
    cat.put(KEYS.service("far", "shop", "db"), encode_export(export("far", "db", addresses=("10.9.0.1", "10.9.0.2"))),
            100)
    view = cat.view()
    ops = planner.plan(Inputs(view, view.sites["here"], state, target, OWNED), listeners, {})
    assert planner.index.computed == computed + 1  # db alone
    assert planner.index.sliced == sliced + 1  # and of db, the slices of far's export alone
    assert ops == plan_imports(view, view.sites["here"], state, target, OWNED)
    # A site record change computes the services that site exports (here: every one; none when none).
    cat.put(KEYS.site("near"), encode_site(site("near", "net-b", zone="z9")), 101)
    view = cat.view()
    planner.plan(Inputs(view, view.sites["here"], state, target, OWNED), listeners, {})
    assert planner.index.computed == computed + 5
    cat.put(KEYS.site("farther"), encode_site(site("farther", "net-b", zone="z9")), 102)
    view = cat.view()
    assert planner.plan(Inputs(view, view.sites["here"], state, target, OWNED), listeners, {}) == []
    assert planner.index.computed == computed + 5
    assert not [op for op in ops if isinstance(op, Patch) and op.name != "db" and "db" not in op.name]


def test_a_view_of_another_change_log_is_planned_in_full() -> None:
    """A restored snapshot's view and the live mirror's count generations apart: no change log spans both."""
    def catalog(addresses: tuple[str, ...]) -> Catalog:
        cat = Catalog(KEYS)
        cat.put(KEYS.site("here"), encode_site(site("here", "net-a")), 1)
        cat.put(KEYS.site("far"), encode_site(site("far", "net-a")), 2)
        cat.put(KEYS.service("far", "shop", "web"), encode_export(export("far", "web", addresses=addresses)), 3)
        return cat

    def target(ns: str, name: str, port: str) -> tuple[str, int] | None:
        return None

    planner = ImportPlanner()
    restored = catalog(("10.9.0.1",)).view()
    state = apply(planner.plan(Inputs(restored, restored.sites["here"], Owned(), target, OWNED), {}, {}), Owned())
    live = catalog(("10.9.0.1", "10.9.0.2")).view()  # same generation, another log, another endpoint
    assert live.generation == restored.generation
    ops = planner.plan(Inputs(live, live.sites["here"], state, target, OWNED), {}, {})
    assert ops == plan_imports(live, live.sites["here"], state, target, OWNED)
    assert "endpointslices" in [op.resource for op in ops]  # the slice with the new endpoint
