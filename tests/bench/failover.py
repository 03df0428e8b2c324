"""Site death under load: failed connections and time to recover, with the default traffic policy and without.

Real agents (`meshfed agent` processes) on loopback sites: west (the client), east and edge both export
shop/web (their endpoints are servers in this process that answer their site's name, so they outlive
the agents). A client on west opens --rate connections per second for --seconds seconds (bounded in
count and time) through west's egress; after --fault-at seconds east's agent dies:

- `kill`: SIGKILL of east's agent, and with it its gateway (one process): connects to it are refused;
- `stop`: SIGSTOP of east's agent: its gateway black-holes connections (a hung host, or a WAN partition)
  and its lease expires after registry.lease_ttl (10 s) like a dead site's.

Each fault runs with an empty TrafficPolicy applied (every default: retries, outlier ejection, 3 s per-try
timeout), optionally with `--modes` others (a 1 s per-try timeout), and with no policy (the behaviour
before issue 12: next route on a refused connect, the gateway's 10 s handshake + 5 s connect timeouts),
all in the same run. A connection fails when no name
came back within --patience seconds. Each run has its own registry prefix, so runs do not meet.

    .venv/bin/python -m tests.bench.failover [--rate 50] [--seconds 30] [--fault-at 5] [--patience 5]
        [--modes "default policy" "connectPerTry 1s"] [--faults kill stop]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess, write_config
from tests.integration.policylab import NamedServer

MODES = {"default policy": "{}", "connectPerTry 1s": "{timeouts: {connectPerTry: 1s}}"}
"""The policies compared with no policy: every default, and a shorter per-try timeout."""


@dataclass
class Run:
    """One scenario's outcome."""

    fault: str
    mode: str
    started: list[tuple[float, float, str]] = field(default_factory=list)
    """(start relative to the fault, latency, site or "" for a failure)."""

    def row(self, patience: float) -> str:
        after = [r for r in self.started if r[0] >= 0]
        failed = [r for r in self.started if not r[2]]
        slow = [r for r in after if r[2] and r[1] > 1.0]
        recover = max((max(r[0], 0.0) for r in failed), default=0.0)  # every connection started later succeeded
        fast = max((max(r[0], 0.0) for r in [*failed, *slow]), default=0.0)  # later ones all took < 1 s
        worst = max((r[1] for r in after if r[2]), default=0.0)
        return (f"| {self.fault} | {self.mode} | {len(self.started)} | {len(failed)} | {len(slow)} | "
                f"{recover:.2f} s | {fast:.2f} s | {worst:.2f} s |")


async def meshfed(*args: str) -> None:
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "federation", *args], capture_output=True,
                                  text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


async def who(addr: tuple[str, int], patience: float) -> str:
    try:
        async with asyncio.timeout(patience):
            reader, writer = await asyncio.open_connection(*addr)
            try:
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return ""
    return line.decode().strip()


async def listener(agent: AgentProcess) -> tuple[str, int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = json.loads((await asyncio.to_thread(agent.get, "/status"))[1])
        for imp in status.get("imports", []):
            if imp["service"] == "shop/web" and imp["listeners"].get("tcp"):
                host, _, port = imp["listeners"]["tcp"].rpartition(":")
                return host, int(port)
        await asyncio.sleep(0.2)
    raise AssertionError("west's egress never listened for shop/web")


async def scenario(tmp: Path, etcd: EtcdProcess, ports: dict[str, int], fault: str, mode: str,
                   args: argparse.Namespace) -> Run:
    prefix = f"/bench-{fault}-{mode.replace(' ', '-').replace(':', '')}"
    agents: dict[str, AgentProcess] = {}
    run = Run(fault, mode)
    stopped = False
    try:
        for site in ("east", "edge", "west"):
            exports = [] if site == "west" else [{
                "namespace": "shop", "name": "web", "ports": [{"name": "tcp", "port": 80}],
                "endpoints": [{"addresses": ["127.0.0.1"], "ports": {"tcp": ports[site]}}]}]
            state = tmp / prefix.strip("/") / site
            state.mkdir(parents=True)
            cfg = write_config(state.parent / f"{site}.yaml", site, [etcd.endpoint], state, exports, ttl=10,
                               registry={"prefix": prefix},
                               gateway={"ca_dir": str(tmp / f"ca-{site}"), "listen_address": "127.0.0.1",
                                        "listen_port": 0})
            agents[site] = AgentProcess(cfg, state).start()
        for agent in agents.values():
            await asyncio.to_thread(agent.wait_ready, 60)
        addr = await listener(agents["west"])
        if mode in MODES:
            doc = tmp / "policy.yaml"
            doc.write_text("apiVersion: meshfed.io/v1alpha1\nkind: TrafficPolicy\n"
                           f"metadata: {{namespace: shop, name: web}}\nspec: {MODES[mode]}\n")
            # Signed by an operator: agents run registry.signatures require (the default) and skip unsigned ones.
            await meshfed("policy", "apply", "-f", str(doc), "--endpoints", etcd.endpoint.removeprefix("http://"),
                          "--prefix", prefix, "--operator", str(tmp / "operator"))
            deadline = time.monotonic() + 30
            while 'meshfed_policies{kind="TrafficPolicy"} 1.0' not in agents["west"].get("/metrics")[1]:
                assert time.monotonic() < deadline, "west's agent never took the policy"
                await asyncio.sleep(0.1)
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while seen != {"east", "edge"}:  # both sites in west's view
            assert time.monotonic() < deadline, f"west reaches only {seen}"
            seen.add(await who(addr, args.patience))
            seen.discard("")
        loop = asyncio.get_running_loop()
        start = loop.time()
        fault_time = start + args.fault_at
        tasks = []

        async def one(at: float) -> None:
            site = await who(addr, args.patience)
            run.started.append((at - fault_time, loop.time() - at, site))

        for i in range(int(args.rate * args.seconds)):
            at = start + i / args.rate
            await asyncio.sleep(max(0.0, at - loop.time()))
            if not stopped and loop.time() >= fault_time:
                pid = agents["east"].proc.pid  # type: ignore[union-attr]
                os.kill(pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
                stopped = True
            tasks.append(asyncio.create_task(one(loop.time())))
        await asyncio.gather(*tasks)
        return run
    finally:
        east = agents.get("east")
        if stopped and fault == "stop" and east is not None and east.proc is not None:
            os.kill(east.proc.pid, signal.SIGCONT)
        for name, agent in agents.items():
            if name == "east" and fault == "kill" and stopped:
                continue
            with contextlib.suppress(AssertionError):
                await asyncio.to_thread(agent.stop)
        if east is not None and east.proc is not None and east.proc.poll() is None:
            east.proc.kill()
            east.proc.wait()


async def main(args: argparse.Namespace) -> None:
    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(
            prefix="meshfed-failover-") as d:
        tmp = Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        etcd = EtcdProcess(data_dir=tmp / "etcd")
        await asyncio.to_thread(etcd.start)
        servers = {site: NamedServer(site) for site in ("east", "edge")}
        try:
            for s in servers.values():
                await s.start()
            await meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(tmp / "ca"))
            await meshfed("ca", "operator", "bench", "--ca", str(tmp / "ca"), "--out", str(tmp / "operator"))
            for site in ("west", "east", "edge"):
                await meshfed("ca", "site", site, "--ca", str(tmp / "ca"), "--out", str(tmp / f"ca-{site}"))
            ports = {site: s.port for site, s in servers.items()}
            runs = []
            for fault in args.faults:
                for mode in [*args.modes, "no policy"]:
                    print(f"running: {fault}, {mode} ...", flush=True)
                    runs.append(await scenario(tmp, etcd, ports, fault, mode, args))
            print(f"\n{args.rate:g} connections/s for {args.seconds:g} s through west's egress; east's agent dies "
                  f"at {args.fault_at:g} s; a connection fails after {args.patience:g} s without an answer; "
                  "loopback sites (one process per agent), load average "
                  f"{os.getloadavg()[0]:.1f}\n")
            print("| fault | policy | connections | failed | slower than 1 s | until every new connection "
                  "succeeds | until every new one succeeds within 1 s | slowest success after the fault |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            for run in runs:
                print(run.row(args.patience))
        finally:
            for s in servers.values():
                await s.close()
            await asyncio.to_thread(etcd.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fault-at", type=float, default=5.0)
    parser.add_argument("--patience", type=float, default=5.0)
    parser.add_argument("--keep", help="a new directory for the agents' state and logs, kept afterwards")
    parser.add_argument("--modes", nargs="+", default=["default policy"], choices=list(MODES))
    parser.add_argument("--faults", nargs="+", default=["kill", "stop"], choices=["kill", "stop"])
    asyncio.run(main(parser.parse_args()))
