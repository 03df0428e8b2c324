"""Benchmark: meshfed DNS against unbound and NSD, all serving the same 10,000 federated services.

    .venv/bin/python -m tests.bench.dns [--seconds 10] [--services 10000] [--workers 1] [--updates 100]

Needs Debian's `dnsperf`, `unbound` and `nsd`. Each server runs in its own process on 127.0.0.1; dnsperf
sends the same query file (A and SRV names of every service, AAAA and PTR of some) to each for a
bounded time. Prints queries/s, mean and p99 latency, and meshfed's ratio to unbound (a recursive
resolver's local data, one thread) and to NSD (an authoritative server, one process). meshfed runs
twice: with a static zone, and with registry updates arriving while it serves (--updates per second,
each one export changed and handed to the server through its mesh holder, as a live agent's mirror does:
the zone part is rebuilt and the response memo cleared). Not collected by pytest (tests/bench is
outside `testpaths`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from federation.dns.nodes import AAAA, PTR, SRV, A, name_of
from federation.dns.zone import ZoneBuilder
from tests.dnshelp import ZONE, big_view

SEED = 1645


def zone_records(services: int) -> list[tuple[str, str, str]]:
    """(owner, type, rdata) of every A/AAAA/SRV/PTR record meshfed serves for `services` services."""
    view, vips = big_view(services, seed=SEED)
    zone = ZoneBuilder(ZONE, local_site="east").build(view, frozenset(), (vips))
    out = []
    for labels, node in zone.nodes.items():
        for rdtype in node.types():
            if rdtype not in (A, AAAA, SRV, PTR):
                continue
            rrset = zone.rrset(labels, node, rdtype)
            assert rrset is not None
            out += [(name_of(labels).to_text(), rrset.rdtype.name, rd.to_text()) for rd in rrset]
    return out


def query_file(records: list[tuple[str, str, str]], path: Path) -> int:
    """Every service's A name, every SRV name, and a share of AAAA and PTR names, shuffled."""
    names = sorted({(owner, rtype) for owner, rtype, _ in records})
    wanted = [
        (o, t) for o, t in names
        if (t == "A" and o.count(".") == 5) or t == "SRV" or (t in ("AAAA", "PTR") and zlib.crc32(o.encode()) % 4 == 0)
    ]
    random.Random(SEED).shuffle(wanted)
    path.write_text("".join(f"{o} {t}\n" for o, t in wanted))
    return len(wanted)


def free_port() -> int:
    """A loopback port free for both TCP (as the kernel picks it) and UDP."""
    for _ in range(100):
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def unbound_config(records: list[tuple[str, str, str]], port: int, workdir: Path) -> Path:
    lines = [
        "server:",
        "  interface: 127.0.0.1",
        f"  port: {port}",
        "  do-ip6: no",
        "  do-daemonize: no",
        '  chroot: ""',
        '  username: ""',
        f'  directory: "{workdir}"',
        '  pidfile: ""',
        '  logfile: ""',
        "  use-syslog: no",
        "  verbosity: 0",
        "  num-threads: 1",
        "  access-control: 127.0.0.0/8 allow",
        f'  local-zone: "{ZONE}." static',
        '  local-zone: "240.240.in-addr.arpa." static',
        '  local-zone: "4.6.5.6.6.6.8.6.3.7.5.6.d.6.d.f.ip6.arpa." static',
    ]
    lines += [f'  local-data: "{o} 5 IN {t} {d}"' for o, t, d in records]
    lines += ["remote-control:", "  control-enable: no"]
    path = workdir / "unbound.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def nsd_config(records: list[tuple[str, str, str]], port: int, workdir: Path) -> Path:
    """NSD serving the same records: one zone file per zone unbound gets a local-zone for."""
    zones = {ZONE: [], "240.240.in-addr.arpa": [], "4.6.5.6.6.6.8.6.3.7.5.6.d.6.d.f.ip6.arpa": []}
    for owner, rtype, data in records:
        zone = next((z for z in zones if owner.rstrip(".").endswith(z) and z != ZONE), ZONE)
        zones[zone].append(f"{owner} 5 IN {rtype} {data}")
    lines = [
        "server:",
        f"  ip-address: 127.0.0.1@{port}",
        "  do-ip6: no",
        "  server-count: 1",
        '  username: ""',
        '  chroot: ""',
        f'  zonesdir: "{workdir}"',
        f'  zonelistfile: "{workdir}/zone.list"',
        f'  xfrdfile: "{workdir}/xfrd.state"',
        f'  pidfile: "{workdir}/nsd.pid"',
        f'  logfile: "{workdir}/nsd.log"',
        "  verbosity: 0",
        "  rrl-ratelimit: 0",  # response rate limiting would drop a benchmark's queries from one address
        "  rrl-whitelist-ratelimit: 0",
        "remote-control:",
        "  control-enable: no",
    ]
    for i, (zone, rrs) in enumerate(zones.items()):
        head = [f"$ORIGIN {zone}.", "$TTL 5",
                f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 60 10 3600 5", f"@ IN NS ns.{ZONE}."]
        if zone == ZONE:
            head.append("ns IN A 127.0.0.1")
        (workdir / f"zone{i}.zone").write_text("\n".join(head + rrs) + "\n")
        lines += ["zone:", f"  name: {zone}", f"  zonefile: zone{i}.zone"]
    path = workdir / "nsd.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_udp(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Wait until something answers a DNS query on 127.0.0.1:port."""
    import dns.message
    import dns.query

    q = dns.message.make_query(f"dns-version.{ZONE}", "TXT")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5)
            return
        except Exception:  # noqa: S112 - not up yet
            continue
    raise RuntimeError(f"nothing answered on port {port} within {timeout:.0f}s")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process and its children (NSD serves from a child) have used so far."""
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo and len(out) < 64:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                continue
    return out


def dnsperf(port: int, queries: Path, seconds: int, pid: int, rate: int = 0) -> dict[str, float]:
    """Run dnsperf for `seconds` (at most `rate` q/s if set); throughput, latency and server CPU per query."""
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds),
           "-c", "4", "-q", "200", "-t", "2", "-v"]
    if rate:
        cmd += ["-Q", str(rate)]
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    cpu = cpu_seconds(pid) - cpu_before
    lat: list[float] = []
    qps = lost = 0.0
    for line in out.splitlines():
        if line.startswith("> "):
            parts = line.split()  # "> NOERROR name type seconds", or "> T name type" for a timeout
            if len(parts) == 5 and parts[1] != "T":
                lat.append(float(parts[4]))
        elif "Queries per second:" in line:
            qps = float(line.split(":")[1])
        elif "Queries lost:" in line:
            lost = float(line.split(":")[1].split()[0])
    lat.sort()
    return {
        "cpu_us": cpu / max(len(lat), 1) * 1e6,
        "qps": qps,
        "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan"),
        "lost": lost,
    }


def serve(services: int, port: int, workers: int, updates: float = 0.0) -> None:
    """The meshfed side: one DnsServer process answering the benchmark zone until SIGTERM.

    With `updates` > 0 the server follows a mesh holder, as in a live agent, and a task changes one
    export's first address `updates` times per second (bounded by the run: it ends with the process).
    """
    from federation.core.catalog import Catalog
    from federation.core.codec import encode_export, encode_site
    from federation.core.keys import Keys
    from federation.core.view import MeshView
    from federation.dns.server import DnsServer
    from federation.dns.settings import DnsSettings
    from federation.runtime.values import Value

    layout = Keys()

    async def main() -> None:
        view, vips = big_view(services, seed=SEED)
        catalog = None
        if updates:
            # A live agent's views come from its catalog (each knows what changed since the last): so do these.
            catalog = Catalog(layout)
            records = {layout.site(s.name): encode_site(s) for s in view.sites.values()}
            records.update({layout.service(*k): encode_export(e) for k, e in view.exports.items()})
            catalog.resync(records, 1)
            view = catalog.view()
        settings = DnsSettings(udp=(f"127.0.0.1:{port}",), tcp=(f"127.0.0.1:{port}",), forwarding=False,
                               workers=workers)
        mesh: Value[MeshView] = Value(view, name="mesh", same=lambda a, b: a is b)
        server = DnsServer(settings, local_site="east", mesh=mesh, vips=Value(vips, name="vips"))
        started = time.perf_counter()
        server.update(view, vips=vips)
        print(f"meshfed: {len(server.fast)} pre-encoded answers built in {time.perf_counter() - started:.1f}s",
              file=sys.stderr, flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            tasks = []
            if catalog is not None:
                tasks.append(asyncio.create_task(server.run(), name="dns-follow"))
                tasks.append(asyncio.create_task(_churn(catalog, mesh, updates), name="registry-updates"))
            await stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _churn(catalog: Catalog, mesh: Value[MeshView], rate: float) -> None:
        rng = random.Random(SEED)
        keys = sorted(mesh.get().exports)
        start = time.monotonic()
        n = 0
        try:
            while True:
                n += 1
                key = keys[rng.randrange(len(keys))]
                old = mesh.get().exports[key]
                first = old.endpoints[0]
                moved = dataclasses.replace(first, addresses=(f"10.250.{(n >> 8) & 255}.{n & 255}",
                                                              *first.addresses[1:]))
                new = dataclasses.replace(old, endpoints=(moved, *old.endpoints[1:]))
                catalog.put(layout.service(*key), encode_export(new), n + 1)
                mesh.set(catalog.view())
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        finally:
            print(f"meshfed: {n} registry updates applied in {time.monotonic() - start:.0f}s",
                  file=sys.stderr, flush=True)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def run_server(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        wait_udp(port, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="dnsperf run time per server (default 10)")
    parser.add_argument("--services", type=int, default=10_000, help="services in the zone (default 10000)")
    parser.add_argument("--workers", type=int, default=1, help="meshfed UDP sockets (SO_REUSEPORT)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server (default 2)")
    parser.add_argument("--rate", type=int, default=20_000, help="q/s of the fixed-rate latency run")
    parser.add_argument("--updates", type=float, default=100.0,
                        help="registry updates/s in meshfed's second run (0: no such run)")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.services, args.serve, args.workers, args.updates)
        return 0
    for tool in ("dnsperf", "unbound", "nsd"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (apt-get install dnsperf unbound nsd)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-dns-") as tmp:
        work = Path(tmp)
        records = zone_records(args.services)
        queries = work / "queries.txt"
        n = query_file(records, queries)
        print(f"{args.services} services, {len(records)} records, {n} distinct queries, {args.seconds}s per server, "
              f"{os.cpu_count()} CPUs")
        meshfed = [sys.executable, "-m", "tests.bench.dns", "--services", str(args.services),
                   "--workers", str(args.workers)]
        servers = {
            "unbound (1 thread)": lambda port: ["unbound", "-d", "-c", str(unbound_config(records, port, work))],
            "nsd (1 server)": lambda port: ["nsd", "-d", "-c", str(nsd_config(records, port, work))],
            "meshfed": lambda port: [*meshfed, "--serve", str(port), "--updates", "0"],
        }
        if args.updates:
            servers[f"meshfed, {args.updates:g} updates/s"] = lambda port: [
                *meshfed, "--serve", str(port), "--updates", str(args.updates)]
        # Alternate the servers over several rounds and keep each one's best: the machine may be shared.
        best: dict[str, dict[str, float]] = {}
        fixed: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for name, command in servers.items():
                port = free_port()
                proc = run_server(command(port), port)
                try:
                    r = dnsperf(port, queries, args.seconds, proc.pid)
                    if name not in best or r["qps"] > best[name]["qps"]:
                        best[name] = r
                    r = dnsperf(port, queries, args.seconds, proc.pid, rate=args.rate)
                    if name not in fixed or r["p99_ms"] < fixed[name]["p99_ms"]:
                        fixed[name] = r
                finally:
                    stop(proc)
    for title, results in ((f"saturated ({args.rounds} rounds, best)", best),
                           (f"at a fixed {args.rate} q/s (best p99)", fixed)):
        ref, nsd = results["unbound (1 thread)"], results["nsd (1 server)"]
        print(f"\n{title}")
        print(f"{'server':<28} {'queries/s':>10} {'mean ms':>8} {'p99 ms':>7} {'lost':>6} {'CPU us/q':>8} "
              f"{'q/s / unbound':>13} {'p99 / unbound':>13} {'q/s / nsd':>9} {'p99 / nsd':>9}")
        for name, r in results.items():
            print(f"{name:<28} {r['qps']:>10.0f} {r['mean_ms']:>8.3f} {r['p99_ms']:>7.3f} {r['lost']:>6.0f} "
                  f"{r['cpu_us']:>8.1f} {r['qps'] / ref['qps']:>13.2f} {r['p99_ms'] / ref['p99_ms']:>13.2f} "
                  f"{r['qps'] / nsd['qps']:>9.2f} {r['p99_ms'] / nsd['p99_ms']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
