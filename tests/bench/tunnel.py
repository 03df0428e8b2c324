"""Tunnel benchmark on loopback: direct TCP vs a haproxy mTLS pair vs meshfed egress + gateway.

Run: .venv/bin/python -m tests.bench.tunnel [--seconds 5] [--uvloop]
Needs haproxy and iperf3 (Debian packages). Prints a markdown table with meshfed/haproxy ratios.
Every process it starts is stopped by PID; every load loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from federation.core.records import Endpoint, EndpointPort, Gateway, ServiceExport, ServicePort, Site
from federation.core.view import MeshView
from federation.pki.issuing import Authority, cert_pem, issue_gateway, new_root, new_site_ca, save_site
from tests.netns.node import dump_view
from tests.pkihelp import now

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
MAX_RTT_SAMPLES = 20000
MAX_CONNECTIONS = 50000


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def process(*cmd: str, ready: str | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `cmd`; wait for a stdout line starting with `ready` (or a short settle); stop it by PID."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
    try:
        line = ""
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith(ready):
                raise RuntimeError(f"{cmd[0]} did not start: {line!r}")
        else:
            time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
        yield line[len(ready or ""):].strip()
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def iperf(port: int, seconds: float) -> float:
    """Single-stream throughput in Gbit/s through `port` (iperf3 client)."""
    out = subprocess.run(["iperf3", "-c", HOST, "-p", str(port), "-t", str(seconds), "-J"],
                         capture_output=True, text=True, timeout=seconds + 30, check=True)
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def rtt(port: int, seconds: float) -> tuple[float, float]:
    """p50 and p99 of a 64-byte request/response round trip on one connection, in microseconds."""
    samples: list[float] = []
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"x" * 64
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(samples) < MAX_RTT_SAMPLES:
            t0 = time.perf_counter()
            s.sendall(msg)
            got = 0
            while got < 64:
                got += len(s.recv(64 - got))
            samples.append((time.perf_counter() - t0) * 1e6)
    samples = samples[len(samples) // 10:]  # drop warm-up
    q = statistics.quantiles(samples, n=100)
    return q[49], q[98]


async def _connections(port: int, seconds: float, concurrency: int) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline and done < MAX_CONNECTIONS:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"y" * 64)
            await reader.readexactly(64)
            writer.close()
            await writer.wait_closed()
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - t0)


def connections_per_second(port: int, seconds: float, concurrency: int = 8) -> float:
    """New connections per second, each carrying one 64-byte exchange."""
    return asyncio.run(_connections(port, seconds, concurrency))


def make_pki(tmp: Path) -> tuple[Authority, dict[str, Authority]]:
    """One mesh root and site CAs a and b, shared by haproxy and meshfed (the same kind of certificates)."""
    root = new_root("mesh.example", now())
    cas = {site: new_site_ca(root, site, now()) for site in ("a", "b")}
    for site, ca in cas.items():
        save_site(tmp / site, ca)
    return root, cas


def haproxy_pair(tmp: Path, root: Authority, cas: dict[str, Authority], backends: list[int]
                 ) -> tuple[list[str], list[str], list[int]]:
    """A haproxy initiator (plain in, mTLS out) and terminator (mTLS in, plain out), one path per backend."""
    pems = {}
    for site in ("a", "b"):
        leaf = issue_gateway(cas[site], "gw", now())
        pems[site] = tmp / f"haproxy-{site}.pem"
        pems[site].write_bytes(leaf.chain_pem() + leaf.key_pem())
    ca = tmp / "haproxy-ca.pem"
    ca.write_bytes(cert_pem(root.cert))
    common = "global\n  nbthread 1\ndefaults\n  mode tcp\n" \
             "  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
    init, term, fronts = [common], [common], []
    for i, backend in enumerate(backends):
        front, middle = free_port(), free_port()
        fronts.append(front)
        init.append(f"frontend fe{i}\n  bind {HOST}:{front}\n  default_backend be{i}\n"
                    f"backend be{i}\n  server s {HOST}:{middle} ssl crt {pems['a']} ca-file {ca}"
                    " verify required ssl-min-ver TLSv1.3\n")
        term.append(f"frontend fe{i}\n  bind {HOST}:{middle} ssl crt {pems['b']} ca-file {ca}"
                    f" verify required ssl-min-ver TLSv1.3\n  default_backend be{i}\n"
                    f"backend be{i}\n  server s {HOST}:{backend}\n")
    (tmp / "initiator.cfg").write_text("".join(init))
    (tmp / "terminator.cfg").write_text("".join(term))
    return (["haproxy", "-db", "-f", str(tmp / "initiator.cfg")],
            ["haproxy", "-db", "-f", str(tmp / "terminator.cfg")], fronts)


def meshfed_view(tmp: Path, cas: dict[str, Authority], backend_ports: dict[str, int], gw_port: int
                 ) -> tuple[Path, Path, Path]:
    sites = {site: Site(site, f"net-{site}", gateways=(Gateway("gw", HOST, gw_port),),
                        ca_chain=cert_pem(cas[site].cert).decode()) for site in cas}
    exports = {
        ("b", "bench", name): ServiceExport("b", "bench", name, (ServicePort("tcp", 1),),
                                            endpoints=(Endpoint((HOST,), (EndpointPort("tcp", port),)),))
        for name, port in backend_ports.items()
    }
    view_file = tmp / "view.json"
    view_file.write_text(dump_view(MeshView(sites=sites, exports=exports)))
    return tmp / "a", tmp / "b", view_file


def measure(name: str, iperf_port: int, echo_port: int, seconds: float) -> dict[str, float]:
    """One round of every measurement through one path."""
    print(f"# {name} ...", file=sys.stderr)
    gbps = iperf(iperf_port, seconds)
    p50, p99 = rtt(echo_port, seconds)
    cps = connections_per_second(echo_port, seconds)
    return {"gbps": gbps, "p50": p50, "p99": p99, "cps": cps}


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The median of each measurement over rounds."""
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument("--uvloop", action="store_true", help="run meshfed processes on uvloop")
    args = parser.parse_args()
    for tool in ("haproxy", "iperf3"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install {tool}", file=sys.stderr)
            return 2
    py = sys.executable
    rounds: dict[str, list[dict[str, float]]] = {"direct TCP": [], "haproxy mTLS pair": [],
                                                 "meshfed egress + gateway": []}
    env = {"MESHFED_UVLOOP": "1" if args.uvloop else "0"}
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-") as d:
        tmp = Path(d)
        root, cas = make_pki(tmp)
        iperf_port, gw_port = free_port(), free_port()
        with process("iperf3", "-s", "-B", HOST, "-p", str(iperf_port)), \
                process(py, "-m", "tests.netns.node", "echo", HOST, "0", ready="READY ") as echo:
            echo_port = int(echo)
            ha_init, ha_term, (ha_iperf, ha_echo) = haproxy_pair(tmp, root, cas, [iperf_port, echo_port])
            a_dir, b_dir, view_file = meshfed_view(tmp, cas, {"iperf": iperf_port, "echo": echo_port}, gw_port)
            with process(*ha_term), process(*ha_init), \
                    process(py, "-m", "tests.netns.node", "gateway", "b", str(b_dir), str(view_file), HOST,
                            str(gw_port), ready="READY ", env=env), \
                    process(py, "-m", "tests.netns.node", "egress", "a", str(a_dir), str(view_file), HOST,
                            ready="READY ", env=env) as ports:
                listeners = json.loads(ports)
                paths = {
                    "direct TCP": (iperf_port, echo_port),
                    "haproxy mTLS pair": (ha_iperf, ha_echo),
                    "meshfed egress + gateway": (listeners["bench/iperf/tcp"], listeners["bench/echo/tcp"]),
                }
                for i in range(args.rounds):
                    for name, (ip, ep) in paths.items():
                        rounds[name].append(measure(f"round {i + 1}: {name}", ip, ep, args.seconds))
    print(table({name: median_of(r) for name, r in rounds.items()}))
    return 0


def table(r: dict[str, dict[str, float]]) -> str:
    lines = ["| path | throughput (Gbit/s) | RTT p50 (us) | RTT p99 (us) | new connections/s |",
             "| --- | --- | --- | --- | --- |"]
    for name, m in r.items():
        lines.append(f"| {name} | {m['gbps']:.2f} | {m['p50']:.0f} | {m['p99']:.0f} | {m['cps']:.0f} |")
    ha, mf = r["haproxy mTLS pair"], r["meshfed egress + gateway"]
    lines.append(f"| meshfed / haproxy | {mf['gbps'] / ha['gbps']:.2f}x | {mf['p50'] / ha['p50']:.2f}x | "
                 f"{mf['p99'] / ha['p99']:.2f}x | {mf['cps'] / ha['cps']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
