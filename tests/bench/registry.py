"""Registry benchmark: per-change lag from site A's publisher to what site B shows, against a bare aetcd watch.

Site A exports 100 services x 100 endpoints (10,000 endpoints) and then changes every endpoint once,
paced at --rate changes/s through the real Publisher. Site B observes through the real Mirror
(list + watch + decode + validate + typed events + a new view per burst). The floor is a bare aetcd
prefix watch that only JSON-decodes the same values, run against the same workload in the same run.

Then what a user of site B sees: a real `meshfed agent` of site B (DNS and egress on, same network as A)
while A changes --agent-changes endpoints at --agent-rate changes/s: the lag to B's DNS answer (each
endpoint has a hostname, so `<host>.east.<svc>.bench.svc.clusterset.local` answers its one address;
polled as tests/bench/scaleobserve.Propagation says), against a bare watch of the same changes; and, for
--route-changes ClusterSetIP services whose one endpoint moves between loopback backends, the lag until a
new connection through B's egress listener lands on the new backend (a connection every 10 ms).
Also reports the mirror's memory per 100,000 endpoints (tracemalloc), and what signed records cost
(issue 13): signing on write (the publisher's seal step) against encoding alone, and verifying on read
(a catalog listing with the record verifier) against decoding alone, per record and projected to a
1,000-site mesh of 100,000 exports, and the same for VIP allocations and claims (tests/bench/vipsigning.py).
With `--chunks both` (the default) every etcd part runs twice in the same run, site A writing whole records
and then endpoint chunks of `--chunk-size` (issue 11), each beside its own bare-watch floor; first it prints
what one endpoint change costs the writer and a reader in either form (tests/bench/chunkcost.py).
Prints ratios, not just times.

    .venv/bin/python -m tests.bench.registry [--rate 2000] [--services 100] [--per-service 100]
                                             [--agent-changes 1000] [--agent-rate 200] [--route-changes 50]
                                             [--chunks both|on|off] [--chunk-size 10]
    .venv/bin/python -m tests.bench.registry --signing-only [--sites 20] [--per-site 100] [--endpoints 10]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import gc
import json
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import aetcd
import yaml

from federation.core.catalog import Catalog, Listed
from federation.core.codec import encode_export
from federation.core.keys import Keys, SiteKey
from federation.core.records import Endpoint, EndpointPort, ServiceExport, ServicePort, ServiceType
from federation.core.view import MeshView
from federation.pki.issuing import new_root, new_site_ca, save_site
from federation.registry.embedded import EtcdProcess, free_port
from federation.registry.etcd import EtcdClient
from federation.registry.mirror import Mirror
from tests.bench.chunkcost import print_change_costs
from tests.bench.scaleobserve import Propagation, answers
from tests.bench.vipsigning import print_vips, vip_costs
from tests.integration.agentproc import AgentProcess, write_config
from tests.pkihelp import now
from tests.util import HandPublisher, site

KEYS = Keys()


def address(change: int) -> str:
    """A unique address per change id, so the observer can tell which change it sees."""
    return f"10.{(change >> 16) & 255}.{(change >> 8) & 255}.{change & 255}"


def change_of(addr: str) -> int:
    _, a, b, c = (int(x) for x in addr.split("."))
    return (a << 16) | (b << 8) | c


def make_exports(services: int, per: int, generation: int) -> list[ServiceExport]:
    base = generation * services * per
    return [
        ServiceExport("east", "bench", f"svc{s}", (ServicePort("http", 80),),
                      endpoints=tuple(Endpoint((address(base + s * per + e),)) for e in range(per)))
        for s in range(services)
    ]


async def drive_changes(publisher: HandPublisher, services: int, per: int, rate: float,
                        submitted: dict[int, float]) -> None:
    """Change every endpoint once (generation 1), at `rate` changes per second."""
    current = make_exports(services, per, 0)
    base = services * per
    total = services * per
    batch = max(1, int(rate / 200))  # one batch every 5 ms
    start = time.perf_counter()
    for i in range(0, total, batch):
        for change in range(i, min(i + batch, total)):
            s, e = divmod(change, per)
            eps = list(current[s].endpoints)
            eps[e] = Endpoint((address(base + change),))
            current[s] = dataclasses.replace(current[s], endpoints=tuple(eps))
            submitted[base + change] = time.perf_counter()
        publisher.set_exports(current)
        delay = start + (i + batch) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)


def lags(submitted: dict[int, float], observed: dict[int, float]) -> list[float]:
    return sorted(observed[c] - submitted[c] for c in submitted if c in observed)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))]


async def run_mirror(etcd: EtcdProcess, services: int, per: int, rate: float, chunk_size: int = 0) -> list[float]:
    pub = HandPublisher(EtcdClient([etcd.endpoint]), KEYS, site("east"), make_exports(services, per, 0), ttl=30,
                        chunk_size=chunk_size)
    mirror = Mirror(EtcdClient([etcd.endpoint]), KEYS)
    base = services * per
    observed: dict[int, float] = {}
    submitted: dict[int, float] = {}

    def on_change(view: MeshView, events: object) -> None:
        now = time.perf_counter()
        for ev in events:  # type: ignore[attr-defined]
            export = getattr(ev, "export", None)
            if export is None:
                continue
            for ep in export.endpoints:
                c = change_of(ep.addresses[0])
                if c >= base and c not in observed:
                    observed[c] = now

    mirror.subscribe(on_change)
    tasks = [asyncio.create_task(pub.run(), name="pub"), asyncio.create_task(mirror.run(), name="mirror")]
    try:
        await asyncio.wait_for(pub.published.wait(), 30)
        await _until(lambda: len(mirror.mesh.get().exports) == services, 30)
        await drive_changes(pub, services, per, rate, submitted)
        await _until(lambda: len(observed) == services * per, 60)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return lags(submitted, observed)


async def run_floor(etcd: EtcdProcess, services: int, per: int, rate: float, chunk_size: int = 0) -> list[float]:
    """The same workload observed by a bare aetcd watch that only decodes JSON (of export or chunk records)."""
    pub = HandPublisher(EtcdClient([etcd.endpoint]), KEYS, site("east"), make_exports(services, per, 0), ttl=30,
                        chunk_size=chunk_size)
    base = services * per
    observed: dict[int, float] = {}
    submitted: dict[int, float] = {}
    host, port = etcd.endpoint.rsplit(":", 1)
    prefix = KEYS.root().encode()

    async def watch() -> None:
        async with aetcd.Client(host=host, port=int(port)) as client:
            rev = (await client.get_prefix(b"\0none")).header.revision
            async for event in await client.watch_prefix(prefix, start_revision=rev + 1):
                now = time.perf_counter()
                if not event.kv.value:
                    continue
                obj = json.loads(event.kv.value)
                for ep in obj.get("endpoints", ()):
                    c = change_of(ep["addresses"][0])
                    if c >= base and c not in observed:
                        observed[c] = now

    pub_task = asyncio.create_task(pub.run(), name="pub")
    await asyncio.wait_for(pub.published.wait(), 30)
    watch_task = asyncio.create_task(watch(), name="floor-watch")
    try:
        await asyncio.sleep(0.5)
        await drive_changes(pub, services, per, rate, submitted)
        await _until(lambda: len(observed) == services * per, 60)
    finally:
        for t in (pub_task, watch_task):
            t.cancel()
        await asyncio.gather(pub_task, watch_task, return_exceptions=True)
    return lags(submitted, observed)


def memory_per_100k(services: int = 1000, per: int = 100) -> tuple[float, float]:
    """(MiB held by a Catalog + its view for services*per endpoints, MiB of the raw JSON values)."""
    values = {KEYS.service("east", "bench", e.name): encode_export(e) for e in make_exports(services, per, 3)}
    raw = sum(len(v) for v in values.values()) / 2**20
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    catalog = Catalog(KEYS)
    catalog.resync(values, 1)
    view = catalog.view()
    gc.collect()
    held = (tracemalloc.get_traced_memory()[0] - before) / 2**20
    tracemalloc.stop()
    del view, catalog
    return held * 100_000 / (services * per), raw * 100_000 / (services * per)


async def run_agent(etcd: EtcdProcess, tmp: Path, args: argparse.Namespace, chunk_size: int = 0
                    ) -> dict[str, list[float]]:
    """Site B as a real agent: lags to its DNS answer and to its egress route, and a bare watch of the same."""
    services, per = args.services, args.per_service
    root = new_root("mesh.example", now())
    save_site(tmp / "west-ca", new_site_ca(root, "west", now()))
    backends = [await asyncio.start_server(_ident, "127.0.0.1", 0) for _ in range(4)]
    ports = [int(b.sockets[0].getsockname()[1]) for b in backends]

    def hosts(gen: int) -> list[ServiceExport]:
        return [dataclasses.replace(e, type=ServiceType.HEADLESS, endpoints=tuple(
            dataclasses.replace(ep, hostname=f"ep{j}") for j, ep in enumerate(e.endpoints)))
            for e in make_exports(services, per, gen)]

    def routed(r: int, port: int) -> ServiceExport:
        return ServiceExport("east", "bench", f"route{r}", (ServicePort("http", 80),),
                             endpoints=(Endpoint(("127.0.0.1",), (EndpointPort("http", port),)),))

    routes = [routed(r, ports[0]) for r in range(4)]
    current = hosts(0)
    pub = HandPublisher(EtcdClient([etcd.endpoint]), KEYS, site("east"), [*current, *routes], ttl=30,
                        chunk_size=chunk_size)
    dns_port = free_port()
    config = write_config(tmp / "west.yaml", "west", [etcd.endpoint], tmp / "west", [], ttl=10,
                          dns={"udp": [f"127.0.0.1:{dns_port}"], "tcp": [f"127.0.0.1:{dns_port}"]},
                          gateway={"ca_dir": str(tmp / "west-ca"), "listen_address": "127.0.0.1", "listen_port": 0})
    data = yaml.safe_load(config.read_text())
    data["site"]["network"] = "net-a"  # A's network: the egress connects straight to A's endpoints
    # Site A here is a hand publisher that does not sign (signing costs are measured by --signing-only).
    data["registry"]["signatures"] = "accept"
    config.write_text(yaml.safe_dump(data))
    floor_seen: dict[str, float] = {}
    prop = Propagation("127.0.0.1", dns_port)
    tasks = [asyncio.create_task(pub.run(), name="pub"),
             asyncio.create_task(_floor_watch(etcd, floor_seen), name="floor-watch")]
    agent = AgentProcess(config, tmp / "west").start()
    try:
        await asyncio.wait_for(pub.published.wait(), 30)
        await asyncio.to_thread(agent.wait_ready, 120)
        await _until_answer("127.0.0.1", dns_port, f"ep0.east.svc{services - 1}.bench.svc.clusterset.local.", 60)
        listeners = {i["service"]: next(iter(i["listeners"].values()))
                     for i in json.loads(agent.get("/status")[1])["imports"] if i["listeners"]}
        tasks.append(asyncio.create_task(prop.run(), name="propagation"))
        base = services * per
        submitted: dict[int, float] = {}
        batch = max(1, int(args.agent_rate / 200))
        start = time.perf_counter()
        for i in range(0, args.agent_changes, batch):
            for change in range(i, min(i + batch, args.agent_changes)):
                s_, e = divmod(change % (services * per), per)
                eps = list(current[s_].endpoints)
                eps[e] = dataclasses.replace(eps[e], addresses=(address(base + change),))
                current[s_] = dataclasses.replace(current[s_], endpoints=tuple(eps))
                submitted[change] = time.monotonic()
                prop.add(change, f"ep{e}.east.svc{s_}.bench.svc.clusterset.local.", address(base + change),
                         submitted[change])
            pub.set_exports([*current, *routes])
            await asyncio.sleep(max(0.0, start + (i + batch) / args.agent_rate - time.perf_counter()))
        route_lags = []
        for n in range(args.route_changes):
            r, port = n % len(routes), ports[(n // len(routes) + 1) % len(ports)]
            routes[r] = routed(r, port)
            pub.set_exports([*current, *routes])
            route_lags.append(await _until_route(listeners.get(f"bench/route{r}"), port, time.monotonic(), 30))
            await asyncio.sleep(0.1)
        await prop.settle(30)
    finally:
        agent.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for b in backends:
            b.close()
    changes = sorted(submitted)
    return {
        "bare aetcd watch (floor)": [floor_seen.get(address(base + c), float("inf")) - submitted[c] for c in changes],
        "agent DNS answer": prop.lags(changes),
        "agent egress route (new conn.)": route_lags,
    }


async def _ident(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend that names itself: writes its port, then closes."""
    writer.write(f"{writer.get_extra_info('sockname')[1]}\n".encode())
    await writer.drain()
    writer.close()


async def _until_route(listener: str | None, port: int, since: float, bound: float) -> float:
    """Seconds from `since` until a new connection through `listener` reaches the backend on `port`."""
    if listener is None:
        return float("inf")
    host, _, lport = listener.rpartition(":")
    while time.monotonic() - since < bound:
        try:
            reader, writer = await asyncio.open_connection(host, int(lport))
            line = await asyncio.wait_for(reader.readline(), 2)
            writer.close()
            if line.strip() == str(port).encode():
                return time.monotonic() - since
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(0.01)
    return float("inf")


async def _until_answer(host: str, port: int, name: str, bound: float) -> None:
    deadline = time.monotonic() + bound
    while not await answers(host, port, name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not answered in {bound:.0f}s")
        await asyncio.sleep(0.1)


async def _floor_watch(etcd: EtcdProcess, seen: dict[str, float]) -> None:
    """The bare watch beside the agent: first time each address appears in a JSON-decoded value."""
    host, port = etcd.endpoint.rsplit(":", 1)
    async with aetcd.Client(host=host, port=int(port)) as client:
        rev = (await client.get_prefix(b"\0none")).header.revision
        async for event in await client.watch_prefix(KEYS.root().encode(), start_revision=rev + 1):
            now_ = time.monotonic()
            if event.kv.value:
                for ep in json.loads(event.kv.value).get("endpoints", ()):
                    seen.setdefault(ep["addresses"][0], now_)
def signing_costs(sites: int, per_site: int, endpoints: int) -> dict[str, float]:
    """Seconds per record to seal (sign) and to verify, against encoding and decoding alone, in one run."""
    from federation.core.codec import encode_site
    from federation.core.verification import Mode
    from federation.pki.records import RecordVerifier
    from federation.pki.verifying import TrustBundle
    from federation.registry.publishing import desired_records
    from federation.registry.sealing import Seal, seal
    from tests.pkihelp import Mesh

    mesh = Mesh()
    from federation.pki.signing import issue_registry_signer

    now_ms = int(time.time() * 1000)
    unsigned: dict[str, bytes] = {}
    signed: dict[str, bytes] = {}
    t_encode = t_seal = 0.0
    for i in range(sites):
        name = f"site{i}"
        signer = issue_registry_signer(mesh.site_ca(name), datetime.datetime.now(datetime.UTC))
        kit = Seal(signer.kid, (signer.cert_pem(),), signer.sign)
        exports = [
            ServiceExport(name, "bench", f"svc{s}", (ServicePort("http", 80),),
                          endpoints=tuple(Endpoint((address(s * endpoints + e),)) for e in range(endpoints)),
                          exported_at=1.0)
            for s in range(per_site)
        ]
        t0 = time.perf_counter()
        desired = desired_records(KEYS, mesh.site(name), exports, {}, 1.0)
        t1 = time.perf_counter()
        sealed = seal(KEYS, name, desired, {}, kit, now_ms)
        t2 = time.perf_counter()
        t_encode += t1 - t0
        t_seal += t2 - t1
        unsigned.update(desired)
        unsigned[KEYS.site(name)] = encode_site(mesh.site(name))
        signed.update(sealed)
    records = len(signed)

    def listing(values: dict[str, bytes], verify: bool) -> tuple[float, float, int]:
        """(seconds for the site records, seconds for the exports, exports): a listing, site records first."""
        check = None
        if verify:
            check = RecordVerifier(KEYS, TrustBundle.from_pem(mesh.bundle_pem()), Mode.REQUIRE).check
        catalog = Catalog(KEYS, check=check)
        site_records = {k: v for k, v in values.items() if isinstance(KEYS.parse(k), SiteKey)}
        exports = {k: v for k, v in values.items() if k not in site_records}
        t0 = time.perf_counter()
        out = catalog.resync({k: Listed(v, 1) for k, v in site_records.items()}, 1)
        t1 = time.perf_counter()
        for k, v in exports.items():
            out.rejected += catalog.put(k, v, 2).rejected
        t2 = time.perf_counter()
        assert not out.rejected, out.rejected[:3]
        return t1 - t0, t2 - t1, len(exports)

    d_sites, d_exports, n = listing(unsigned, verify=False)
    v_sites, v_exports, _ = listing(signed, verify=True)
    catalog = Catalog(KEYS, check=RecordVerifier(KEYS, TrustBundle.from_pem(mesh.bundle_pem()), Mode.REQUIRE).check)
    catalog.resync({k: Listed(v, 1) for k, v in signed.items()}, 1)
    t0 = time.perf_counter()
    catalog.resync({k: Listed(v, 1) for k, v in signed.items()}, 2)  # the same revisions: nothing decoded
    t_relist = time.perf_counter() - t0
    return {"records": records, "exports": n, "sites": sites, "encode": t_encode / records, "seal": t_seal / records,
            "decode": d_exports / n, "verify": v_exports / n, "site_decode": d_sites / sites,
            "site_verify": v_sites / sites, "relist": t_relist / records,
            "bytes_unsigned": sum(map(len, unsigned.values())) / records,
            "bytes_signed": sum(map(len, signed.values())) / records}


def print_signing(c: dict[str, float]) -> None:
    us = 1e6
    print(f"signed records: {c['sites']:.0f} sites, {c['exports']:.0f} exports ({c['bytes_unsigned']:.0f} B unsigned, "
          f"{c['bytes_signed']:.0f} B signed per record on average)")
    print(f"  write: encode {c['encode'] * us:.0f} us/record, + sign {c['seal'] * us:.0f} us/record "
          f"(ratio {(c['encode'] + c['seal']) / c['encode']:.2f}x)")
    print(f"  read an export: decode {c['decode'] * us:.0f} us, decode + verify {c['verify'] * us:.0f} us "
          f"(ratio {c['verify'] / c['decode']:.2f}x)")
    print(f"  read a site record: decode {c['site_decode'] * us:.0f} us, + verify its signer's chain and its "
          f"signature {c['site_verify'] * us:.0f} us (once per site and signer: cached)")
    print(f"  listed again at the same revision: {c['relist'] * us:.1f} us/record (nothing decoded or verified)")
    initial = (c["decode"] * 1e5 + c["site_decode"] * 1e3, c["verify"] * 1e5 + c["site_verify"] * 1e3)
    print(f"  a 1,000-site mesh (100,000 exports): initial listing {initial[0]:.1f} s unsigned, {initial[1]:.1f} s "
          f"verified (in 5 ms turns); each later change costs one verify")


async def _until(check: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish in time")
        await asyncio.sleep(0.01)


async def main_async(args: argparse.Namespace) -> None:
    if args.signing_only:
        print_signing(signing_costs(args.sites, args.per_site, args.endpoints))
        print_vips(vip_costs())
        return
    sizes = {"off": [0], "on": [args.chunk_size], "both": [0, args.chunk_size]}[args.chunks]
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print_change_costs(args.per_service, sizes)
    dns: dict[int, tuple[list[float], list[float]]] = {}
    for size in sizes:
        mode = f"chunks of {size}" if size else "whole records"
        with tempfile.TemporaryDirectory() as tmp:
            results = {}
            for name, fn in (("floor", run_floor), ("mirror", run_mirror)):
                etcd = EtcdProcess(data_dir=Path(tmp) / name)
                etcd.start()
                try:
                    results[name] = await fn(etcd, args.services, args.per_service, args.rate, size)
                finally:
                    etcd.stop()
            seen = None
            if args.agent_changes or args.route_changes:
                etcd = EtcdProcess(data_dir=Path(tmp) / "agent")
                etcd.start()
                try:
                    seen = await run_agent(etcd, Path(tmp), args, size)
                finally:
                    etcd.stop()
        floor, mirror = results["floor"], results["mirror"]
        n = args.services * args.per_service
        print(f"\n[{mode}] registry benchmark: {n} endpoint changes in {args.services} services, paced at "
              f"{args.rate:.0f}/s (load average {os.getloadavg()[0]:.1f})")
        print(f"{'observer':<28}{'changes seen':>14}{'p50 lag ms':>12}{'p99 lag ms':>12}")
        for name, vals in (("bare aetcd watch (floor)", floor), ("meshfed mirror", mirror)):
            print(f"{name:<28}{len(vals):>14}{pct(vals, 0.5) * 1e3:>12.1f}{pct(vals, 0.99) * 1e3:>12.1f}")
        print(f"ratio mirror/floor: p50 {pct(mirror, 0.5) / pct(floor, 0.5):.2f}x, "
              f"p99 {pct(mirror, 0.99) / pct(floor, 0.99):.2f}x, "
              f"mean {statistics.mean(mirror) / statistics.mean(floor):.2f}x")
        if seen is not None:
            print(f"[{mode}] what site B's agent shows: {args.agent_changes} endpoint changes at "
                  f"{args.agent_rate:.0f}/s, {args.route_changes} route changes 100 ms apart")
            print(f"{'observer':<34}{'changes seen':>14}{'p50 lag ms':>12}{'p99 lag ms':>12}")
            for name, vals in seen.items():
                shown = [v for v in vals if v != float("inf")]
                print(f"{name:<34}{f'{len(shown)}/{len(vals)}':>14}{pct(sorted(vals), 0.5) * 1e3:>12.1f}"
                      f"{pct(sorted(vals), 0.99) * 1e3:>12.1f}")
            dns_lag, dns_floor = sorted(seen["agent DNS answer"]), sorted(seen["bare aetcd watch (floor)"])
            if dns_lag and dns_floor:
                dns[size] = (dns_lag, dns_floor)
                print(f"ratio DNS answer/floor: p50 {pct(dns_lag, 0.5) / pct(dns_floor, 0.5):.2f}x, "
                      f"p99 {pct(dns_lag, 0.99) / pct(dns_floor, 0.99):.2f}x")
    if 0 in dns and args.chunk_size in dns and args.chunk_size:
        (off, off_floor), (on, on_floor) = dns[0], dns[args.chunk_size]
        print(f"\nheadless DNS lag of one endpoint, chunks of {args.chunk_size} against whole records: "
              f"p50 {pct(on, 0.5):.2f} s vs {pct(off, 0.5):.2f} s ({pct(on, 0.5) / pct(off, 0.5):.2f}x), "
              f"p99 {pct(on, 0.99):.2f} s vs {pct(off, 0.99):.2f} s; against the floor of each run: p50 "
              f"{pct(on, 0.5) / pct(on_floor, 0.5):.1f}x vs {pct(off, 0.5) / pct(off_floor, 0.5):.1f}x")
    held, raw = memory_per_100k()
    print(f"mirror memory: {held:.1f} MiB per 100,000 endpoints (raw JSON values: {raw:.1f} MiB, ratio {held / raw:.1f}x)")
    print_signing(signing_costs(args.sites, args.per_site, args.endpoints))
    print_vips(vip_costs())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="endpoint changes per second")
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--per-service", type=int, default=100)
    parser.add_argument("--agent-changes", type=int, default=1000, help="endpoint changes the agent run makes")
    parser.add_argument("--agent-rate", type=float, default=200.0, help="their pace, changes per second")
    parser.add_argument("--route-changes", type=int, default=50, help="endpoint moves seen through the egress")
    parser.add_argument("--chunk-size", type=int, default=10,
                        help="endpoints per chunk when chunks are on (registry.endpoint_chunk_size)")
    parser.add_argument("--chunks", choices=("both", "on", "off"), default="both",
                        help="run with endpoint chunks on, off, or both in the same run (default)")
    parser.add_argument("--signing-only", action="store_true", help="only the sign/verify costs (no etcd)")
    parser.add_argument("--sites", type=int, default=20, help="sites in the sign/verify sample")
    parser.add_argument("--per-site", type=int, default=100, help="exports per site in the sign/verify sample")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per export in the sign/verify sample")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
