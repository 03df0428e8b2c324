"""Prober benchmark on loopback: what one probe costs against a bare mTLS handshake, and a round of 1,000.

Run: .venv/bin/python -m tests.bench.probing [--count 300] [--targets 1000]
One process: a real east-west gateway (in-process, tests.tunnelhelp.TwoSites) and west's prober. Prints
the probe's wall time and CPU (both ends) against a reference measured in the same run, the same client
context opening and closing a TLS connection to the same gateway; then one prober round over `--targets`
gateway entries of east (all the same listener), at probe_rate 100,000/s and the default concurrency, to
show what the rate limit, not the machine, bounds. Every loop is bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from federation.core.records import Gateway
from federation.runtime.values import Value
from gateway.probing import Prober
from gateway.settings import GatewaySettings
from tests.tunnelhelp import two_sites


async def sequential(work: Callable[[], Awaitable[None]], count: int) -> tuple[float, float, float]:
    """Await `work()` `count` times one after another: (p50 wall, p99 wall, CPU per call) in seconds."""
    walls = []
    cpu0 = time.process_time()
    for _ in range(count):
        t0 = time.perf_counter()
        await work()
        walls.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / count
    walls.sort()
    return statistics.median(walls), walls[int(len(walls) * 0.99) - 1], cpu


async def main(count: int, targets: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with two_sites(Path(tmp)) as sites:
            settings = Value(GatewaySettings(probe_rate=100_000.0), name="gateway settings")
            prober = Prober("west", sites.mesh_value, sites.west.client, sites.west.trust, settings)
            gw = Gateway("gw", "127.0.0.1", sites.gw_port)

            async def handshake() -> None:
                _, writer = await asyncio.open_connection("127.0.0.1", sites.gw_port, ssl=sites.west.client,
                                                          server_hostname=f"gw.east.{sites.mesh.trust_domain}")
                writer.close()

            async def probe() -> None:
                result = await prober.probe("east", gw)
                assert result.ok, result

            rows = []
            for name, work in (("TLS handshake (reference)", handshake), ("probe: handshake + probe", probe)):
                rows.append((name, *await sequential(work, count)))
            print(f"| {count} sequential, loopback | p50 ms | p99 ms | CPU ms (both ends) |")
            print("| --- | --- | --- | --- |")
            for name, p50, p99, cpu in rows:
                print(f"| {name} | {p50 * 1000:.2f} | {p99 * 1000:.2f} | {cpu * 1000:.2f} |")
            print(f"probe / handshake: wall {rows[1][1] / rows[0][1]:.2f}x, CPU {rows[1][3] / rows[0][3]:.2f}x")

            # A round over many targets: east's record lists `targets` gateways, the first one real.
            many = tuple(Gateway("gw" if i == 0 else f"gw{i}", "127.0.0.1", sites.gw_port) for i in range(targets))
            view = sites.view()
            east = view.sites["east"]
            sites.mesh_value.set(type(view)(sites={**view.sites, "east": type(east)(
                name=east.name, network=east.network, locality=east.locality, gateways=many, ca_chain=east.ca_chain)},
                exports=view.exports))
            cpu0, t0 = time.process_time(), time.perf_counter()
            await prober.round()
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            alive = sum(1 for s in prober.states.values() if s.alive)
            print(f"one round over {len(prober.states)} gateways: {wall:.2f} s wall, {cpu:.2f} s CPU "
                  f"({cpu / max(len(prober.states), 1) * 1000:.2f} ms a probe), {alive} alive; at the default "
                  f"probe_rate ({GatewaySettings().probe_rate:g}/s) the same round takes {len(prober.states) / GatewaySettings().probe_rate:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--targets", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(min(args.count, 5000), min(args.targets, 5000)))
