"""What addresses for remote headless endpoints cost an asking site: allocation, zone builds, one change.

A mesh of --sites sites on networks of their own, each exporting one headless StatefulSet service of
--pods pods and --clusterip ClusterSetIP services of two endpoints; the asking site imports all of it.
The reference is the same zone built without endpoint addresses (what main did), in the same run:

    .venv/bin/python -m tests.bench.headless [--sites 1000] [--pods 3] [--clusterip 9] [--changes 200]

Rows: the allocator's first full pass; a full zone build with and without the addresses; one pod of one
site changing (allocator update + incremental zone build), median over --changes changes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.endpoints import EndpointAllocator
from federation.core.keys import Keys
from federation.core.records import Endpoint, Locality, ServiceExport, ServicePort, ServiceType, Site
from federation.dns.zone import ZoneBuilder

KEYS = Keys()
ZONE = "clusterset.local"


def _headless(site: str, i: int, pods: int, generation: int = 0) -> ServiceExport:
    eps = tuple(Endpoint((f"10.{i // 250}.{i % 250}.{p + 1 + generation % 2}",), hostname=f"db-{p}")
                for p in range(pods))
    return ServiceExport(site, "shop", f"db-{i}", (ServicePort("pg", 5432),), type=ServiceType.HEADLESS, endpoints=eps)


def build(args: argparse.Namespace) -> Catalog:
    cat = Catalog(KEYS)
    rev = 1
    cat.put(KEYS.site("here"), encode_site(Site("here", "net-here", Locality("eu", "a"))), rev)
    for i in range(args.sites):
        site = f"s{i}"
        rev += 1
        cat.put(KEYS.site(site), encode_site(Site(site, f"net-{i}", Locality("eu", "b"))), rev)
        rev += 1
        cat.put(KEYS.service(site, "shop", f"db-{i}"), encode_export(_headless(site, i, args.pods)), rev)
        for j in range(args.clusterip):
            rev += 1
            e = ServiceExport(site, "shop", f"web-{i}-{j}", (ServicePort("http", 80),),
                              endpoints=(Endpoint((f"10.{i // 250}.{i % 250}.{100 + j}",)),
                                         Endpoint((f"10.{i // 250}.{i % 250}.{200 + j}",))))
            cat.put(KEYS.service(site, "shop", e.name), encode_export(e), rev)
    return cat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--clusterip", type=int, default=9)
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()
    cat = build(args)
    view = cat.view()
    book = EndpointAllocator(["240.241.0.0/16"], "here", "net-here")
    for key in view.services():  # resolved once, as the mirror's consumers share it: not the allocator's cost
        view.service(*key)
    t0 = time.perf_counter()
    table = book.update(view)
    alloc_s = time.perf_counter() - t0
    tracemalloc.start()  # the same pass again, from scratch, for its memory (tracemalloc slows it down)
    again = EndpointAllocator(["240.241.0.0/16"], "here", "net-here")
    kept = again.update(view)
    alloc_mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert dict(kept) == dict(table)
    ref_full = eps_full = float("inf")
    for _ in range(3):  # alternating, best of three: the first build also pays for resolving the view
        plain, with_eps = ZoneBuilder(ZONE, local_site="here"), ZoneBuilder(ZONE, local_site="here")
        t0 = time.perf_counter()
        plain.build(view, frozenset(), {})
        ref_full = min(ref_full, time.perf_counter() - t0)
        t0 = time.perf_counter()
        with_eps.build(view, frozenset(), {}, table)
        eps_full = min(eps_full, time.perf_counter() - t0)
    ref_one: list[float] = []
    eps_one: list[float] = []
    rev = 10**6
    for n in range(min(args.changes, args.sites)):
        rev += 1
        cat.put(KEYS.service(f"s{n}", "shop", f"db-{n}"), encode_export(_headless(f"s{n}", n, args.pods, 1)), rev)
        view = cat.view()
        t0 = time.perf_counter()
        plain.build(view, frozenset(), {})
        ref_one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        table = book.update(view)
        with_eps.build(view, frozenset(), {}, table)
        eps_one.append(time.perf_counter() - t0)
    endpoints = sum(len(v) for v in table.values())
    print(f"mesh: {args.sites} sites, {args.sites * (1 + args.clusterip)} services, {endpoints} remote headless "
          f"endpoints with an address here (capacity {book.capacity}, unplaced {table.unplaced})")
    print(f"allocator, first pass:            {alloc_s * 1e3:8.1f} ms, {alloc_mem / 2**20:6.2f} MiB")
    print(f"zone full build, reference:       {ref_full * 1e3:8.1f} ms")
    print(f"zone full build, with addresses:  {eps_full * 1e3:8.1f} ms   ratio {eps_full / ref_full:5.2f}")
    r, e = statistics.median(ref_one), statistics.median(eps_one)
    print(f"one pod changes, reference:       {r * 1e3:8.3f} ms (zone build, median of {len(ref_one)})")
    print(f"one pod changes, with addresses:  {e * 1e3:8.3f} ms (allocator + zone build)   ratio {e / r:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
