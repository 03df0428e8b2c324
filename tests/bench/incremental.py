"""Work in proportion to the change (issue 11): what one export change and one site record change cost the
Kubernetes import plan and the VIP re-signing pass, at 10 and at 1,000 simulated sites, incremental against
the full pass every change used to cost (measured in the same run). Pure cores, no etcd, no API server.

The mesh is the scale benchmark's (tests/bench/scalemesh.py: 100 exports of 10 endpoints per site, services
drawn from min(5000, 50 x sites), each exported by about 2 sites at 10 sites and about 20 at 1,000); the
observer is a Kubernetes site importing all of it. An export change moves one endpoint address of one export;
a site record change moves one site to another zone (every slice of its 100 exports says the zone).

    .venv/bin/python -m tests.bench.incremental [--sites 10,1000,10] [--endpoints 10] [--repeat 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import immutables

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from federation.core.records import Locality, ServiceType, Site
from federation.core.view import MeshView
from federation.core.vips import Allocation, Claim
from federation.registry.vipalloc import SignedBy, unsealed
from federation.sources.kubernetes.importing import (
    Create,
    Delete,
    Inputs,
    Op,
    Owned,
    Patch,
    plan_imports,
)
from federation.sources.kubernetes.replanning import ImportPlanner
from tests.bench import scalemesh as mesh

KEYS = Keys()
OWNED = ("multicluster.meshfed.io/managed-by", "meshfed")
OBSERVER = Site(mesh.OBSERVER, mesh.OBSERVER_NETWORK, Locality("region-0", "zone-a"), kind="kubernetes")


def _apply(ops: list[Op], state: dict[str, dict[Any, Any]], serial: list[int]) -> None:
    """What the API server holds after `ops` (a created ClusterIP Service gets a cluster IP)."""
    for op in ops:
        if isinstance(op, Create):
            obj = dict(op.obj)
            if op.resource == "services" and "clusterIP" not in obj["spec"]:
                serial[0] += 1
                obj["spec"] = {**obj["spec"], "clusterIP": f"10.96.{serial[0] >> 8 & 255}.{serial[0] & 255}"}
            state[op.resource][(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        elif isinstance(op, Delete):
            state[op.resource].pop((op.namespace, op.name), None)
        elif isinstance(op, Patch):
            k = (op.namespace, op.name)
            obj = dict(state[op.resource][k])
            for field, value in op.body.items():
                obj[field] = {**obj.get(field, {}), **value} if field in ("metadata", "spec") else value
            state[op.resource][k] = obj


def _owned(state: dict[str, dict[Any, Any]]) -> Owned:
    return Owned(state["services"], state["serviceimports"], state["endpointslices"])


def _keys(ops: list[Op]) -> list[tuple[str, tuple[str, str]]]:
    return [(op.resource, (op.obj["metadata"]["namespace"], op.obj["metadata"]["name"])) if isinstance(op, Create)
            else (op.resource, (op.namespace, op.name)) for op in ops]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(sites: int, endpoints: int, repeat: int) -> dict[str, Any]:
    shape = mesh.Shape(sites, endpoints=endpoints)
    cat = Catalog(KEYS)
    kvs: dict[str, bytes] = {KEYS.site(OBSERVER.name): encode_site(OBSERVER)}
    exports = {}
    for i in range(sites):
        kvs[KEYS.site(mesh.site_name(i))] = encode_site(mesh.site_record(shape, i, None, ""))
        for position, k in enumerate(mesh.site_services(shape, i)):
            e = mesh.export(shape, i, position, k)
            exports[(i, k)] = e
            kvs[KEYS.service(e.site, e.namespace, e.name)] = encode_export(e)
    t_load, _ = _timed(lambda: cat.resync(kvs, 1))
    view = cat.view()
    listeners = immutables.Map({(ns, name, p.name): ("10.244.0.7", 20000 + n)
                                for n, ((ns, name), svc) in enumerate(view.services().items()) for p in svc.ports})

    def target(ns: str, name: str, port: str) -> tuple[str, int] | None:
        return listeners.get((ns, name, port))

    state: dict[str, dict[Any, Any]] = {"services": {}, "serviceimports": {}, "endpointslices": {}}
    serial = [0]
    planner = ImportPlanner()
    for _ in range(4):  # converge: create, then the ServiceImports take the new cluster IPs
        ops = planner.plan(Inputs(view, OBSERVER, _owned(state), target, OWNED), listeners, {})
        _apply(ops, state, serial)
        for resource, k in _keys(ops):
            planner.touch(resource, k)
    assert not ops, "the import plan did not converge"
    rev = 10
    out: dict[str, Any] = {"sites": sites, "exports": len(view.exports), "services": len(view.services()),
                           "objects": sum(len(v) for v in state.values()), "load": t_load}

    def change(put: Callable[[int], None], name: str) -> None:
        nonlocal rev, view
        inc: list[float] = []
        full: list[float] = []
        computed: list[int] = []
        sliced: list[int] = []
        for r in range(repeat):
            rev += 1
            put(r)
            view = cat.view()
            before, sliced_before = planner.index.computed, planner.index.sliced
            inputs = Inputs(view, OBSERVER, _owned(state), target, OWNED)
            t_inc, ops = _timed(lambda i=inputs: planner.plan(i, listeners, {}))  # type: ignore[misc]
            computed.append(planner.index.computed - before)
            sliced.append(planner.index.sliced - sliced_before)
            if r < 2:  # the full pass is what each change cost before; two runs are enough to see it
                t_full, fresh = _timed(lambda v=view: plan_imports(v, OBSERVER, _owned(state), target, OWNED))  # type: ignore[misc]
                assert ops == fresh, f"{name}: the incremental plan differs from the full one"
                full.append(t_full)
            inc.append(t_inc)
            _apply(ops, state, serial)
            for resource, k in _keys(ops):
                planner.touch(resource, k)
            planner.plan(Inputs(view, OBSERVER, _owned(state), target, OWNED), listeners, {})  # our writes' echo
        out[name] = {"incremental": statistics.median(inc), "full": statistics.median(full),
                     "computed": statistics.median(computed),
                     "sliced": statistics.median(sliced)}

    picks = [(i, k) for (i, k) in sorted(exports) if not mesh.is_headless(k)][::max(1, len(exports) // 50)]

    def move_endpoint(r: int) -> None:
        i, k = picks[r % len(picks)]
        e = exports[(i, k)]
        moved = dataclasses.replace(e.endpoints[0], addresses=(mesh.change_address(rev),))
        exports[(i, k)] = e = dataclasses.replace(e, endpoints=(moved, *e.endpoints[1:]))
        cat.put(KEYS.service(e.site, e.namespace, e.name), encode_export(e), rev)

    def move_site(r: int) -> None:
        i = (7 * r + 3) % sites
        record = mesh.site_record(shape, i, None, "")
        zone = "zone-" + "abc"[(i + r + 1) % 3]
        cat.put(KEYS.site(record.name), encode_site(dataclasses.replace(record, locality=Locality(
            record.locality.region, zone))), rev)

    change(move_endpoint, "export")
    change(move_site, "site")
    out["vip"] = vip_pass(view, sites, repeat)
    return out


def vip_pass(view: MeshView, sites: int, repeat: int) -> dict[str, float]:
    """A site record change: the records its signers signed looked at, against every VIP record of the mesh."""
    kids = {f"kid-{i:04d}": mesh.site_name(i) for i in range(sites)}
    vips: dict[tuple[str, str], Allocation] = {}
    claims: dict[str, Claim] = {}
    for n, (ident, svc) in enumerate(sorted(view.services().items())):
        if svc.type is ServiceType.HEADLESS:
            continue
        kid = f"kid-{n % sites:04d}"  # the allocator of the site that exported it first, say
        address = f"240.240.{n >> 8 & 255}.{n & 255}"
        vips[ident] = Allocation(ident, (address,), None, n + 1, (kid, 1))
        claims[address] = Claim(address, ident, 1.0, n + 1, (kid, 1))
    v = dataclasses.replace(view, vips=immutables.Map(vips), claims=immutables.Map(claims))
    me, current, retired = mesh.site_name(0), "kid-0000", {mesh.site_name(sites - 1)}

    def due(kid: str) -> bool:  # RecordVerifier.resign_due's shape: a departed site's signer, or our old one
        site = kids.get(kid)
        return site in retired or (site == me and kid != current)

    index = SignedBy(kids.get)
    index.due(v, None, due)  # the first pass after the initial sync looks at everything
    inc, full = [], []
    for r in range(repeat):
        changed = {mesh.site_name((7 * r + 3) % sites)}
        t_inc, found = _timed(lambda: index.due(v, changed, due))  # noqa: B023
        t_full, every = _timed(lambda: unsealed(v, due))
        assert {id(x) for x in found} <= {id(x) for x in every}
        inc.append(t_inc)
        full.append(t_full)
    return {"records": len(vips) + len(claims), "incremental": statistics.median(inc), "full": statistics.median(full)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--sites", default="10,1000,10",
                   help="comma-separated site counts; a size given twice counts with its best run (default 10,1000,10)")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per export (default 10, as scale.py)")
    p.add_argument("--repeat", type=int, default=7, help="changes of each kind per size; medians are printed")
    args = p.parse_args()
    rows = []
    for n in (int(x) for x in args.sites.split(",")):
        t0 = time.perf_counter()
        rows.append(measure(n, args.endpoints, args.repeat))
        print(f"# {n} sites measured in {time.perf_counter() - t0:.0f} s: {json.dumps(rows[-1])}", file=sys.stderr)
    ms = 1000.0
    print(f"{'sites':>6} {'exports':>8} {'objects':>8} | {'what':<22} {'incremental':>12} {'full (before)':>14}"
          f" {'full/incr':>9} {'services / sites computed':>25}")
    for row in rows:
        for what, label in (("export", "k8s: one export change"), ("site", "k8s: one site record")):
            m = row[what]
            print(f"{row['sites']:>6} {row['exports']:>8} {row['objects']:>8} | {label:<22}"
                  f" {m['incremental'] * ms:>9.2f} ms {m['full'] * ms:>11.1f} ms {m['full'] / m['incremental']:>8.0f}x"
                  f" {m['computed']:>15.0f} / {m['sliced']:<7.0f}")
        m = row["vip"]
        print(f"{row['sites']:>6} {row['exports']:>8} {m['records']:>8} | {'vip: one site record':<22}"
              f" {m['incremental'] * ms:>9.3f} ms {m['full'] * ms:>11.2f} ms {m['full'] / m['incremental']:>8.0f}x")
    sizes = sorted({row["sites"] for row in rows})
    if len(sizes) >= 2:
        # A size measured more than once (--sites 10,1000,10, against a machine whose load changes) counts
        # with its best run: the ratio compares the work, not what other processes did meanwhile.
        def best(n: int, what: str, kind: str) -> float:
            return min(row[what][kind] for row in rows if row["sites"] == n)

        print(f"\n{sizes[-1]} vs {sizes[0]} sites (goal ~1x):")
        for what, label in (("export", "k8s one export change"), ("site", "k8s one site record"),
                            ("vip", "vip one site record")):
            print(f"  {label:<24} incremental {best(sizes[-1], what, 'incremental') / best(sizes[0], what, 'incremental'):6.1f}x"
                  f"   full (before) {best(sizes[-1], what, 'full') / best(sizes[0], what, 'full'):7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
