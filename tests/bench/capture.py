"""Egress capture benchmark: listening sockets with N imported services, and what one connection costs
through the capture listener (nft REDIRECT + SO_ORIGINAL_DST) against a per-port listener.

Run as root (it builds a network namespace of its own and runs everything inside it):

    .venv/bin/python -m tests.bench.capture [--services 5000] [--connections 2000] [--uvloop]

1. The egress of a VM site importing N ClusterSetIP services, started in listener mode (one loopback
   listener per service port) and in capture mode: listening sockets (`ss -ltn` in the namespace),
   egress start time, and RSS growth.
2. Connect + first byte (send one byte, read its echo) from a client process, interleaved per round:
   straight to the echo server (the reference), through a per-port listener, and through the capture
   path (connect to the VIP). The route is direct (the echo server is the site's own endpoint), so the
   numbers are the egress's own cost, not a tunnel's. Bounded by --connections and --seconds.
Prints markdown tables with ratios against the reference measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry

from federation.core.records import Endpoint, EndpointPort, Gateway, ServiceExport, ServicePort
from federation.core.view import MeshView
from federation.runtime.values import Value
from federation.sources.vm.netlink import VipInterface
from federation.sources.vm.nftables import NftCapture
from federation.sources.vm.settings import VmSettings
from gateway.balancing import Placement
from gateway.egress import Egress
from gateway.settings import GatewaySettings
from gateway.tls import CertificateStore
from tests.netns.nshelp import scratch_netns
from tests.pkihelp import Mesh

ROOT = Path(__file__).resolve().parents[2]
RANGES = ("240.240.0.0/16", "fd6d:6573:6866:6564::/64")
VIP = "240.240.0.1"
MAX_CONNECTIONS = 20000

CLIENT = """
import json, socket, sys, time
targets = [tuple(t) for t in json.loads(sys.argv[1])]
n, limit = int(sys.argv[2]), float(sys.argv[3])
out = {f"{h}:{p}": [] for h, p in targets}
deadline = time.monotonic() + limit
for i in range(n):
    if time.monotonic() > deadline:
        break
    for host, port in targets:
        t0 = time.perf_counter()
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise SystemExit(f"no echo from {host}:{port}")
        out[f"{host}:{port}"].append(time.perf_counter() - t0)
        s.close()
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=2000, help="connections per path (at most 20000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time bound of the connection loop")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.connections = min(args.connections, MAX_CONNECTIONS)
    if args.inner:
        factory = None
        if args.uvloop:  # as the agent runs it: uvloop for this loop only (netlink's thread keeps asyncio's)
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(inner(args))
        return
    if os.geteuid() != 0:
        raise SystemExit("tests.bench.capture needs root (a network namespace, nft rules)")
    with scratch_netns("mfbcap", loopback_up=True) as ns:
        argv = [sys.executable, "-m", "tests.bench.capture", "--inner", "--services", str(args.services),
                "--connections", str(args.connections), "--seconds", str(args.seconds)]
        if args.uvloop:
            argv.append("--uvloop")
        subprocess.run(["ip", "netns", "exec", ns, *argv], cwd=ROOT, check=True, timeout=1800)


async def inner(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mesh = Mesh()
    with tempfile.TemporaryDirectory(prefix="mfbcap") as tmp:
        store = CertificateStore(mesh.site_ca("me"), "gw", Path(tmp) / "me")
        try:
            print(f"# egress capture benchmark ({'uvloop' if args.uvloop else 'asyncio'}, fd limit {hard})\n")
            await sockets(args.services, mesh, store)
            await connections(args.connections, args.seconds, mesh, store)
        finally:
            store.close()


# ---------------------------------------------------------------- 1. sockets at N services


async def sockets(n: int, mesh: Mesh, store: CertificateStore) -> None:
    view = MeshView(
        sites={"me": mesh.site("me", network="net-a"),
               "far": mesh.site("far", network="net-b", gateways=(Gateway("gw", "198.18.9.9"),))},
        exports={("far", "bench", f"svc{i}"): ServiceExport(
            "far", "bench", f"svc{i}", (ServicePort("http", 8080),),
            endpoints=(Endpoint(("198.18.9.10",), (EndpointPort("http", 8080),)),)) for i in range(n)},
    )  # fmt: skip
    vips = {("bench", f"svc{i}"): (str(ipaddress.ip_address(VIP) + i),) for i in range(n)}
    placement = Value(Placement(fallback=("127.0.0.1", 0), vips=vips), name="placement")
    rows = []
    for mode, capture in (("listeners", None), ("capture", ("::", 0))):
        eg = Egress("me", Value(view), store.client, store.bundle, GatewaySettings(pool_size=0),
                    CollectorRegistry(), placement=placement, capture=capture)  # type: ignore[arg-type]
        rss0 = _rss()
        t0 = time.perf_counter()
        await eg.start()
        took = time.perf_counter() - t0
        rows.append((mode, _listening(), took, _rss() - rss0,
                     len(eg.capture.index) if eg.capture is not None else len(eg.listeners())))
        await eg.close()
    print(f"## {n} imported ClusterSetIP services (one TCP port each)\n")
    print("| egress mode | listening sockets | egress start | RSS growth | served service ports |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode, count, took, rss, served in rows:
        print(f"| {mode} | {count} | {took:.2f} s | {rss / 2**20:.1f} MiB | {served} |")
    print(f"\nsockets ratio capture/listeners: {rows[1][1] / max(rows[0][1], 1):.4f}\n")


# ---------------------------------------------------------------- 2. connect + first byte


async def connections(n: int, seconds: float, mesh: Mesh, store: CertificateStore) -> None:
    with _echo() as echo_port:
        view = MeshView(
            sites={"me": mesh.site("me", network="net-a")},
            exports={("me", "bench", "echo"): ServiceExport(
                "me", "bench", "echo", (ServicePort("tcp", 7),),
                endpoints=(Endpoint(("127.0.0.1",), (EndpointPort("tcp", echo_port),)),))},
        )  # fmt: skip
        placement = Value(Placement(fallback=("127.0.0.1", 0), vips={("bench", "echo"): (VIP,)}), name="placement")
        await VipInterface(VmSettings()).reconcile({ipaddress.ip_address(VIP)})
        listeners = Egress("me", Value(view), store.client, store.bundle, GatewaySettings(pool_size=0),
                           CollectorRegistry(), placement=placement, local_services=True)
        captured = Egress("me", Value(view), store.client, store.bundle, GatewaySettings(pool_size=0),
                          CollectorRegistry(), placement=placement, local_services=True, capture=("::", 0))
        rules = NftCapture(RANGES)
        await listeners.start()
        await captured.start()
        try:
            assert captured.capture is not None
            await rules.install(captured.capture.address[1])
            targets = {"direct to the echo server (reference)": ("127.0.0.1", echo_port),
                       "per-port egress listener": listeners.listeners()[("bench", "echo", "tcp")],
                       "egress capture (VIP, nft REDIRECT)": (VIP, 7)}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLIENT, json.dumps(list(targets.values())), str(n), str(seconds),
                stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise SystemExit("the client failed")
            samples = json.loads(out)
        finally:
            await rules.remove()
            await captured.close()
            await listeners.close()
            await VipInterface(VmSettings()).remove()
    results = {name: sorted(samples[f"{h}:{p}"]) for name, (h, p) in targets.items()}
    ref = _pct(next(iter(results.values())), 50)
    per_port = _pct(results["per-port egress listener"], 50)
    print(f"## connect + first byte, {len(next(iter(results.values())))} connections per path, interleaved\n")
    print("| path | p50 | p99 | mean | p50 / direct | p50 / per-port listener |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, xs in results.items():
        p50 = _pct(xs, 50)
        print(f"| {name} | {p50 * 1e6:.0f} us | {_pct(xs, 99) * 1e6:.0f} us | {sum(xs) / len(xs) * 1e6:.0f} us "
              f"| {p50 / ref:.2f} | {p50 / per_port:.2f} |")


@contextlib.contextmanager
def _echo() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.netns.node", "echo", "127.0.0.1", "0"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"echo server did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _listening() -> int:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, timeout=60, check=True)
    return len([line for line in out.stdout.splitlines() if line.strip()])


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


if __name__ == "__main__":
    main()
