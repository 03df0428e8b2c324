"""Per-service health benchmark on loopback: what a health query costs against a gateway probe.

Run: .venv/bin/python -m tests.bench.servicehealth [--count 300]
One process: a real east-west gateway (in-process, tests.tunnelhelp.TwoSites) exporting 128 services (all
at one echo endpoint) and west's side. Prints wall time and CPU (both ends) of the reference measured in
the same run, a gateway probe (fresh mTLS connection and a probe: what `gateway.probe_interval` costs per
site), against a health query for 1 and for 128 services over one kept tunnel (what `activeHealth` costs
per site and interval). The gateway's endpoint checks run too (at most one per service a second). Then
the prober's table at mesh size: 5,000 services at 3 of 1,000 sites each, the CPU of following them and
of one round (every site due). Every loop is bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from federation.core.records import Gateway
from federation.runtime.values import Value
from gateway.healthquery import MAX_SERVICES, Health, HealthAnswer, HealthQuery
from gateway.pool import TunnelPool
from gateway.probing import Prober, _no_spawn
from gateway.serviceprobes import HealthTable
from gateway.settings import GatewaySettings
from tests.bench.probing import sequential
from tests.pkihelp import export
from tests.tunnelhelp import two_sites


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with two_sites(Path(tmp)) as sites:
            port = sites.exports[0].endpoints[0].ports[0].port
            names = [("ns", f"svc{i}") for i in range(MAX_SERVICES)]
            sites.exports.extend(export("east", ns, name, 7, endpoint_ports=(port,)) for ns, name in names)
            sites.publish()
            settings = Value(GatewaySettings(), name="gateway settings")
            prober = Prober("west", sites.mesh_value, sites.west.client, sites.west.trust, settings)
            gw = Gateway("gw", "127.0.0.1", sites.gw_port)
            pool = TunnelPool(("east", gw.address, gw.port), gw, sites.west.client, sites.west.trust,
                              sites.mesh_value, 0, 60.0, 2.0, _no_spawn, keep=1)
            nonce = 0

            async def probe() -> None:
                result = await prober.probe("east", gw)
                assert result.ok, result

            def query(services: list[tuple[str, str]]) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    nonlocal nonce
                    nonce += 1
                    tunnel, _ = await pool.take()
                    answer = await tunnel.health(HealthQuery(nonce, tuple(services)))
                    pool.give_back(tunnel)
                    assert isinstance(answer, HealthAnswer)
                    assert Health.NO_READY_ENDPOINT not in answer.states, answer

                return run

            await query(names)()  # the tunnel opened, the first checks started
            await asyncio.sleep(0.2)
            rows = []
            for name, work in (("gateway probe: handshake + probe (reference)", probe),
                               ("health query, 1 service, kept tunnel", query(names[:1])),
                               (f"health query, {MAX_SERVICES} services, kept tunnel", query(names))):
                rows.append((name, *await sequential(work, count)))
            pool.close()
            print(f"| {count} sequential, loopback | p50 ms | p99 ms | CPU ms (both ends) |")
            print("| --- | --- | --- | --- |")
            for name, p50, p99, cpu in rows:
                print(f"| {name} | {p50 * 1000:.3f} | {p99 * 1000:.3f} | {cpu * 1000:.3f} |")
            ref = rows[0][3]
            print(f"CPU against the gateway probe: 1 service {rows[1][3] / ref:.2f}x, "
                  f"{MAX_SERVICES} services {rows[2][3] / ref:.2f}x "
                  f"({rows[2][3] / MAX_SERVICES / ref:.4f}x per service)")
            checks = sites.gateway.health.checks if sites.gateway is not None else None
            if checks is not None:
                print("endpoint checks at the gateway: ok {:.0f}, failed {:.0f}".format(
                    checks.labels("ok")._value.get(), checks.labels("failed")._value.get()))


def table_at_scale(sites: int = 1000, services: int = 5000, per_service: int = 3) -> None:
    """The prober's bookkeeping for a mesh of `sites` x `services` (pure, no sockets)."""
    names = [f"s{i}" for i in range(sites)]
    table = HealthTable()
    t0 = time.process_time()
    for i in range(services):
        table.set_services(("ns", f"svc{i}"), random.Random(i).sample(names, per_service))
    t1 = time.process_time()
    due = table.due(0.0)
    for site, batch in due.items():
        table.asked(site, batch, 0.0, lambda _s: 1.0)
    t2 = time.process_time()
    for _ in range(100):
        table.due(0.5)
        table.next_due()
    t3 = time.process_time()
    print(f"table, {services} services at {per_service} of {sites} sites ({len(table.states)} pairs): following "
          f"them {(t1 - t0) * 1000:.1f} ms CPU once; a round with every site due {(t2 - t1) * 1000:.1f} ms; "
          f"an idle tick {(t3 - t2) * 10:.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(min(args.count, 5000)))
    table_at_scale()
