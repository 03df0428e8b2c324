"""Agent responsiveness under registry churn: DNS latency while another site keeps changing endpoints.

One agent (a VM site, DNS on a free port) mirrors --services services of another site; a publisher in
a separate process changes endpoints for --seconds. The reference is the same agent idle, measured in
the same run: the script prints the during-churn latency and its ratio to idle. Work the agent does per
registry change in proportion to the whole mesh shows up as a long tail here.

    .venv/bin/python -m tests.bench.churn [--services 3000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rdatatype

from federation.core.keys import Keys
from federation.core.records import Endpoint, ServiceExport, ServicePort
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from tests.integration.agentproc import AgentProcess, write_config
from tests.util import HandPublisher, site


def _export(i: int, gen: int) -> ServiceExport:
    return ServiceExport("far", "bench", f"svc{i}", (ServicePort("http", 80),),
                         endpoints=tuple(Endpoint((f"10.{(i >> 8) & 255}.{i & 255}.{e + gen % 200}",))
                                         for e in range(3)))


async def publish(endpoint: str, services: int, seconds: float) -> None:
    """The churning site (run as a separate process): READY, then changes until `seconds` have passed."""
    current = [_export(i, 0) for i in range(services)]
    pub = HandPublisher(EtcdClient([endpoint]), Keys(), site("far", network="net-far"), current, ttl=30)
    task = asyncio.create_task(pub.run(), name="publisher")
    await pub.published.wait()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop, changes = time.monotonic() + seconds, 0
    while time.monotonic() < stop:
        for i in random.sample(range(services), 20):
            current[i] = _export(i, changes)
            changes += 1
        pub.set_exports(current)
        await asyncio.sleep(0.01)
    print(f"CHANGES {changes}", flush=True)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def measure(services: int, seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="meshfed-churn-"))
    etcd = EtcdProcess(tmp / "etcd")
    etcd.start()
    pub = subprocess.Popen([sys.executable, "-m", "tests.bench.churn", "--publish", etcd.endpoint,
                            "--services", str(services), "--seconds", str(seconds)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    agent = None
    try:
        assert pub.stdout is not None
        assert pub.stdin is not None
        assert pub.stdout.readline().startswith("READY")
        agent = AgentProcess(write_config(tmp / "here.yaml", "here", [etcd.endpoint], tmp / "here", []),
                             tmp / "here").start()
        agent.wait_ready(120)
        host, port = json.loads(agent.get("/status")[1])["dns"]["udp"][0].rsplit(":", 1)
        query = dns.message.make_query("svc1.bench.svc.clusterset.local", dns.rdatatype.A)

        async def one() -> float:
            started = time.perf_counter()
            await dns.asyncquery.udp(query, host, port=int(port), timeout=5)
            return time.perf_counter() - started

        last = dns.message.make_query(f"svc{services - 1}.bench.svc.clusterset.local", dns.rdatatype.A)
        for _ in range(600):  # until every service has its VIP and the agent answers from a full zone
            if (await dns.asyncquery.udp(last, host, port=int(port), timeout=2)).answer:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # let the start-up work (allocations, zone builds) finish: idle means idle
        idle = sorted([await one() for _ in range(100)])
        pub.stdin.write("go\n")
        pub.stdin.flush()
        busy: list[float] = []
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            busy.append(await one())
            await asyncio.sleep(0.01)
        busy.sort()
        changes = pub.stdout.readline().split()[-1]
    finally:
        if agent is not None:
            agent.stop()
        pub.wait(30)
        etcd.stop()

    def pct(v: list[float], p: float) -> float:
        return v[min(len(v) - 1, int(len(v) * p))] * 1e3

    print(f"agent mirroring {services} services; the other site made {changes} endpoint changes in {seconds:.0f}s")
    print(f"{'':<14}{'queries':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, v in (("idle", idle), ("during churn", busy)):
        print(f"{name:<14}{len(v):>9}{pct(v, .5):>9.2f}{pct(v, .99):>9.1f}{v[-1] * 1e3:>9.1f}")
    print(f"churn/idle: p50 {statistics.median(busy) / statistics.median(idle):.1f}x, "
          f"p99 {pct(busy, .99) / pct(idle, .99):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--publish", metavar="ETCD", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        asyncio.run(publish(args.publish, args.services, args.seconds))
    else:
        asyncio.run(measure(args.services, args.seconds))


if __name__ == "__main__":
    main()
