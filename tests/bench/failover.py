"""Site death under load: failed connections and time to recover, with the default traffic policy and without.

Real agents (`meshfed agent` processes): west (the client), east and edge both export shop/web, whose
endpoints are servers that answer their site's name and outlive the agents. A client opens --rate
connections per second for --seconds seconds (bounded in count and time) through west's egress; after
--fault-at seconds east suffers one of:

- `kill`: SIGKILL of east's agent, and with it its gateway (one process): connects to it are refused,
  and east's records leave the registry after registry.lease_ttl (10 s);
- `stop`: SIGSTOP of east's agent: its gateway black-holes connections (a hung host: the kernel still
  completes TCP handshakes) and its lease expires after 10 s like a dead site's;
- `gateway-kill`: SIGKILL of east's gateway while east's agent (its lease, its records) and its endpoints
  live: east advertises its gateway at 127.0.0.2, where a forwarder process relays to the agent's listener
  (a gateway that runs apart from the agent, as a Kubernetes gateway pod does); the forwarder is killed;
- `partition`: network namespaces (tests/netns, federation.devkit.lab: 198.18.0.0/15): east's WAN link goes
  down (packets dropped, no reset) and comes back up after --heal-after seconds; east's agent loses the
  registry too, so its lease may run out. The table says when east served again after the heal. Needs root.

Each fault runs with an empty TrafficPolicy applied (every default: hedged connects, retries, outlier
ejection, 3 s per-try timeout), optionally with other `--modes` (a 1 s per-try timeout, hedging off), and
with no policy at all (which since the defaults work gets the same default rules: the row shows that
nothing has to be applied), all in the same run. A connection fails when no name came back within --patience
seconds. Each run has its own registry prefix (loopback) or lab (namespaces), so runs do not meet.

With --split N (default 10,000; 0: none), N connections through a 90/10 split of east and edge, at most
--parallel at once, and the measured shares against +/- 2 %.

    .venv/bin/python -m tests.bench.failover [--rate 50] [--seconds 30] [--fault-at 5] [--patience 5]
        [--modes "default policy" "connectPerTry 1s" "hedging off"] [--faults kill stop gateway-kill partition]
        [--heal-after 10] [--split 10000] [--parallel 32]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess, write_config
from tests.integration.policylab import NamedServer

MODES = {"default policy": "{}", "connectPerTry 1s": "{timeouts: {connectPerTry: 1s}}",
         "hedging off": "{retries: {hedge: {enabled: false}}}"}
"""The policies compared with no policy: every default, a shorter per-try timeout, no hedged connects."""
LOOPBACK_FAULTS = ("kill", "stop", "gateway-kill")
FRONT = "127.0.0.2"
"""Where east advertises its gateway in `gateway-kill`: a forwarder there relays to the agent's listener."""
SPLIT = "split: [{weight: 90, site: east}, {weight: 10, site: edge}]"


@dataclass
class Run:
    """One scenario's outcome."""

    fault: str
    mode: str
    started: list[tuple[float, float, str]] = field(default_factory=list)
    """(start relative to the fault, latency, site or "" for a failure)."""
    healed: float | None = None
    """When the fault was undone (partition: the link came back), relative to the fault."""
    actions: dict[str, float] = field(default_factory=dict)
    """West's meshfed_egress_policy_actions_total by action at the end of the run."""

    def actions_line(self) -> str:
        shown = ", ".join(f"{k} {v:g}" for k, v in sorted(self.actions.items()) if v)
        return f"- {self.fault}, {self.mode}: {shown or 'none'}"

    def row(self) -> str:
        after = [r for r in self.started if r[0] >= 0]
        failed = [r for r in self.started if not r[2]]
        slow = [r for r in after if r[2] and r[1] > 1.0]
        recover = max((max(r[0], 0.0) for r in failed), default=0.0)  # every connection started later succeeded
        fast = max((max(r[0], 0.0) for r in [*failed, *slow]), default=0.0)  # later ones all took < 1 s
        worst = max((r[1] for r in after if r[2]), default=0.0)
        back = "-"
        if self.healed is not None:
            east = [r[0] - self.healed for r in self.started if r[0] >= self.healed and r[2] == "east"]
            back = f"{min(east):.2f} s" if east else "not within the run"
        return (f"| {self.fault} | {self.mode} | {len(self.started)} | {len(failed)} | {len(slow)} | "
                f"{recover:.2f} s | {fast:.2f} s | {worst:.2f} s | {back} |")


def site_fields(config: Path, **fields: str) -> None:
    """Set fields of the `site:` section of an agent config that `write_config` wrote."""
    doc = yaml.safe_load(config.read_text())
    doc["site"].update(fields)
    config.write_text(yaml.safe_dump(doc))


async def policy_actions(west: AgentProcess) -> dict[str, float]:
    """West's meshfed_egress_policy_actions_total, by action."""
    out = {}
    for line in (await asyncio.to_thread(west.get, "/metrics"))[1].splitlines():
        if line.startswith('meshfed_egress_policy_actions_total{action="'):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return out


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


async def status(agent: AgentProcess) -> dict[str, object]:
    return dict(json.loads((await asyncio.to_thread(agent.get, "/status"))[1]))


async def listener(agent: AgentProcess) -> tuple[str, int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for imp in (await status(agent)).get("imports", []):  # type: ignore[attr-defined]
            if imp["service"] == "shop/web" and imp["listeners"].get("tcp"):
                host, _, port = imp["listeners"]["tcp"].rpartition(":")
                return host, int(port)
        await asyncio.sleep(0.2)
    raise AssertionError("west's egress never listened for shop/web")


async def apply_policy(tmp: Path, etcd: EtcdProcess, prefix: str, spec: str, west: AgentProcess) -> None:
    """Store shop/web's TrafficPolicy with `spec`, signed by the operator, and wait until west took it."""
    doc = tmp / "policy.yaml"
    doc.write_text("apiVersion: meshfed.io/v1alpha1\nkind: TrafficPolicy\n"
                   f"metadata: {{namespace: shop, name: web}}\nspec: {spec}\n")
    # Signed by an operator: agents run registry.signatures require (the default) and skip unsigned ones.
    await meshfed("policy", "apply", "-f", str(doc), "--endpoints", etcd.endpoint.removeprefix("http://"),
                  "--prefix", prefix, "--operator", str(tmp / "operator"))
    deadline = time.monotonic() + 30
    while 'meshfed_policies{kind="TrafficPolicy"} 1.0' not in (await asyncio.to_thread(west.get, "/metrics"))[1]:
        assert time.monotonic() < deadline, "west's agent never took the policy"
        await asyncio.sleep(0.1)


async def both_seen(addr: tuple[str, int], patience: float) -> None:
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while seen != {"east", "edge"}:  # both sites in west's view
        assert time.monotonic() < deadline, f"west reaches only {seen}"
        seen.add(await who(addr, patience))
        seen.discard("")


async def drive(addr: tuple[str, int], run: Run, args: argparse.Namespace, fault: Callable[[], None],
                heal: Callable[[], None] | None = None) -> None:
    """--rate connections/s for --seconds; `fault()` at --fault-at, `heal()` --heal-after seconds later."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    fault_time = start + args.fault_at
    heal_time = fault_time + args.heal_after
    tasks = []
    faulted = False

    async def one(at: float) -> None:
        site = await who(addr, args.patience)
        run.started.append((at - fault_time, loop.time() - at, site))

    for i in range(int(args.rate * args.seconds)):
        at = start + i / args.rate
        await asyncio.sleep(max(0.0, at - loop.time()))
        if not faulted and loop.time() >= fault_time:
            fault()
            faulted = True
        if heal is not None and run.healed is None and loop.time() >= heal_time:
            heal()
            run.healed = loop.time() - fault_time
        tasks.append(asyncio.create_task(one(loop.time())))
    await asyncio.gather(*tasks)


@dataclass
class Loopback:
    """The agents of one loopback run, and east's gateway forwarder where the fault needs one."""

    agents: dict[str, AgentProcess]
    addr: tuple[str, int]
    front: subprocess.Popen[bytes] | None = None


@contextlib.asynccontextmanager
async def loopback(tmp: Path, etcd: EtcdProcess, ports: dict[str, int], prefix: str, spec: str | None,
                   front: bool = False) -> AsyncIterator[Loopback]:
    """west, east and edge agents on loopback under `prefix`, shop/web's policy `spec` (None: none) in force."""
    agents: dict[str, AgentProcess] = {}
    mesh = None
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
            if front and site == "east":
                site_fields(cfg, gateway_address=FRONT)
            agents[site] = AgentProcess(cfg, state).start()
        for agent in agents.values():
            await asyncio.to_thread(agent.admin, 120)  # a busy shared host: starting can take a while
            await asyncio.to_thread(agent.wait_ready, 60)
        mesh = Loopback(agents, await listener(agents["west"]))
        if front:
            port = str((await status(agents["east"]))["gateway"]["listen"]).rpartition(":")[2]  # type: ignore[index]
            mesh.front = subprocess.Popen([sys.executable, "-m", "tests.bench.failover", "--forward",
                                           f"{FRONT}:{port}", f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL)
        if spec is not None:
            await apply_policy(tmp, etcd, prefix, spec, agents["west"])
        yield mesh
    finally:
        if mesh is not None and mesh.front is not None and mesh.front.poll() is None:
            mesh.front.kill()
        if mesh is not None and mesh.front is not None:
            mesh.front.wait()
        for agent in agents.values():
            if agent.proc is not None and agent.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(agent.proc.pid, signal.SIGCONT)  # a stopped east ends like the others
                with contextlib.suppress(AssertionError):
                    await asyncio.to_thread(agent.stop)


async def scenario(tmp: Path, etcd: EtcdProcess, ports: dict[str, int], fault: str, mode: str,
                   args: argparse.Namespace) -> Run:
    prefix = f"/bench-{fault}-{mode.replace(' ', '-').replace(':', '')}"
    run = Run(fault, mode)
    async with loopback(tmp, etcd, ports, prefix, MODES.get(mode), front=fault == "gateway-kill") as mesh:
        await both_seen(mesh.addr, args.patience)

        def strike() -> None:
            east = mesh.agents["east"].proc
            assert east is not None
            if fault == "gateway-kill":
                assert mesh.front is not None
                os.kill(mesh.front.pid, signal.SIGKILL)
            else:
                os.kill(east.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)

        await drive(mesh.addr, run, args, strike)
        run.actions = await policy_actions(mesh.agents["west"])
    return run


async def split(tmp: Path, etcd: EtcdProcess, ports: dict[str, int], args: argparse.Namespace) -> str:
    """--split connections through a 90/10 split, at most --parallel at once: the measured shares."""
    async with loopback(tmp, etcd, ports, "/bench-split", f"{{{SPLIT}}}") as mesh:
        await both_seen(mesh.addr, args.patience)
        sem = asyncio.Semaphore(args.parallel)
        started = time.monotonic()

        async def one() -> str:
            async with sem:
                return await who(mesh.addr, args.patience)

        got = collections.Counter(await asyncio.gather(*(one() for _ in range(args.split))))
        took = time.monotonic() - started
    n = args.split
    east, edge = 100.0 * got["east"] / n, 100.0 * got["edge"] / n
    ok = abs(east - 90) <= 2 and abs(edge - 10) <= 2 and got["east"] + got["edge"] == n
    return (f"split 90/10 (east/edge) over {n:,} connections ({args.parallel} at once, {took:.1f} s): east "
            f"{east:.2f} %, edge {edge:.2f} %, failed {n - got['east'] - got['edge']}: "
            f"{'within' if ok else 'NOT within'} +/- 2 %")


async def main(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind through every `finally`: agents stopped, lab removed
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
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
            for fault in [f for f in args.faults if f in LOOPBACK_FAULTS]:
                for mode in [*args.modes, "no policy"]:
                    print(f"running: {fault}, {mode} ...", flush=True)
                    runs.append(await scenario(tmp, etcd, ports, fault, mode, args))
            if "partition" in args.faults:
                from tests.bench import failovernet
                runs += await failovernet.partitions(tmp, [*args.modes, "no policy"], args)
            shares = await split(tmp, etcd, ports, args) if args.split else None
            print(f"\n{args.rate:g} connections/s for {args.seconds:g} s through west's egress; the fault at "
                  f"{args.fault_at:g} s (a partition heals {args.heal_after:g} s later); a connection fails after "
                  f"{args.patience:g} s without an answer; loopback sites (one process per agent) or, for "
                  f"`partition`, network namespaces; load average {os.getloadavg()[0]:.1f}\n")
            print("| fault | policy | connections | failed | slower than 1 s | until every new connection "
                  "succeeds | until every new one succeeds within 1 s | slowest success after the fault | "
                  "east serves again after the heal |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for run in runs:
                print(run.row())
            print("\nWhat west's traffic policy did (meshfed_egress_policy_actions_total):\n")
            for run in runs:
                if run.mode != "no policy":
                    print(run.actions_line())
            if shares is not None:
                print(f"\n{shares}")
        finally:
            for s in servers.values():
                await s.close()
            await asyncio.to_thread(etcd.stop)


async def forward(listen: str, target: str) -> None:
    """Relay every connection at `listen` to `target` until killed (east's gateway front in gateway-kill)."""
    host, _, port = target.rpartition(":")

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    lhost, _, lport = listen.rpartition(":")
    server = await asyncio.start_server(handle, lhost, int(lport), backlog=1024)
    async with server:
        await server.serve_forever()


async def serve(name: str, listen: str) -> None:
    """A named server at `listen` until killed (an endpoint inside a site's namespace in `partition`)."""
    host, _, port = listen.rpartition(":")
    server = NamedServer(name)
    server.port = int(port)
    server.server = await asyncio.start_server(server._handle, host, int(port), backlog=1024)
    await server.server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fault-at", type=float, default=5.0)
    parser.add_argument("--heal-after", type=float, default=10.0)
    parser.add_argument("--patience", type=float, default=5.0)
    parser.add_argument("--keep", help="a new directory for the agents' state and logs, kept afterwards")
    parser.add_argument("--modes", nargs="+", default=["default policy"], choices=list(MODES))
    parser.add_argument("--faults", nargs="+", default=[*LOOPBACK_FAULTS, "partition"],
                        choices=[*LOOPBACK_FAULTS, "partition"])
    parser.add_argument("--split", type=int, default=10_000)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--forward", nargs=2, metavar=("LISTEN", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=2, metavar=("NAME", "LISTEN"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if not 0 < ns.rate * ns.seconds <= 10_000 or not 0 <= ns.split <= 100_000:
        parser.error("at most 10,000 connections per run and 100,000 for --split")
    if ns.forward:
        asyncio.run(forward(*ns.forward))
    elif ns.serve:
        asyncio.run(serve(*ns.serve))
    else:
        asyncio.run(main(ns))
