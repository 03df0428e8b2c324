"""Scale benchmark (issue 11): one real `meshfed agent` observing N simulated sites in a real etcd.

    .venv/bin/python -m tests.bench.scale                  # 10, 100 and 1,000 sites, one table
    .venv/bin/python -m tests.bench.scale --sites 100      # one size
    .venv/bin/python -m tests.bench.scale --quick          # smoke run: 10 sites, short phases

Per site count: an etcd of its own (--max-txn-ops, --max-request-bytes, --quota-backend-bytes raised as
an operator sizing for 1,000 sites would; or --endpoints for yours); the loader (scaleload.py) bulk-writes
the sites (own lease, record, 100 exports each); a sink answers TLS as every site's gateway; a real
east-west gateway serves one more site ("tunnel") with an echo service; a bare aetcd watcher is the floor.
Then the observer (`python -m federation agent`: a VM site on net-00, gateway on, DNS on a loopback port,
no VIP interface unless --vip-interface) starts, and the script measures from outside:
- start to ready (/readyz 200); start to every VIP answered: etcd is polled (4/s, no load on the agent)
  until every ClusterSetIP service has its allocation, then the 20 names allocated last are asked until
  each answers its VIP; a full sweep of every name follows (a miss is reported). CPU and VmRSS then;
  VmHWM at the end; sockets from /proc/<pid>/{fd,net};
- change propagation: one endpoint of a random site's headless export gets a new address, 100 times 20 ms
  apart, then 100 times/s for 10 s; the lag runs from the loader sending the transaction to the first
  answer of `<hostname>.<site>.<svc>.<ns>.svc.clusterset.local` (the MCS per-endpoint name) holding the new address (scaleobserve.Propagation),
  beside the floor's lag to its watch event, and the agent's CPU per change;
- DNS latency (random ClusterSetIP names) and tunnel RTT (64 bytes via the egress, the tunnel and the
  gateway to the echo server), 100/s each from a probe process, idle and during the 100/s phase;
- /status and /registry, whole and with ?limit=100 (the table says whether the answer was smaller).
Nothing here changes the product: goals it cannot meet yet are printed as measured, or as "never: why".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from federation.core.keys import Keys
from federation.registry.embedded import EtcdProcess, free_port
from federation.registry.etcd import EtcdClient
from tests.bench import scalemesh as mesh
from tests.bench import scaleobserve as obs
from tests.bench.scalereport import Run, latency, never, pct, ratio, samples, seconds, skipped, table, times
from tests.bench.scalestage import (
    CAPTURE_INTERFACE,
    CAPTURE_SETTING,
    ETCD_FLAGS,
    agent_config,
    meshfed,
    readline,
    spawn,
    stop,
    tunnel_site,
)
from tests.dnshelp import ZONE
from tests.integration.agentproc import AgentProcess
from tests.util import HandPublisher


class Measurement:
    """One run at one site count: every process it starts, stopped by PID at the end."""

    def __init__(self, args: argparse.Namespace, sites: int, tmp: Path) -> None:
        self.args = args
        self.shape = mesh.Shape(sites, seed=args.seed)
        self.tmp = tmp
        self.run = Run(sites, load_average=obs.load_average())
        self.procs: list[subprocess.Popen[str]] = []
        self.etcd: EtcdProcess | None = None
        self.agent: AgentProcess | None = None
        self.sizes: dict[str, int] = {}
        self.background: list[asyncio.Task[None]] = []

    def start(self, *cmd: str) -> subprocess.Popen[str]:
        proc = spawn(sys.executable, "-m", *cmd)
        self.procs.append(proc)
        return proc

    async def go(self) -> Run:
        try:
            await self._go()
        except Exception as exc:  # the table says where the run stopped and why
            self.run.notes.append(f"run stopped early: {exc!r}")
        finally:
            if self.agent is not None:
                try:
                    self.agent.stop()
                except AssertionError as exc:
                    self.run.notes.append(str(exc).splitlines()[0])
            for proc in reversed(self.procs):
                stop(proc)
            if self.etcd is not None:
                self.etcd.stop()
            await asyncio.gather(*self.background, return_exceptions=True)
        return self.run

    async def _go(self) -> None:
        a, r, tmp, n = self.args, self.run, self.tmp, self.shape.sites
        if a.endpoints:
            endpoint, txn_ops, txn_bytes = a.endpoints, 100, 1_400_000
        else:
            self.etcd = EtcdProcess(tmp / "etcd", extra_args=ETCD_FLAGS)
            self.etcd.start()
            endpoint, txn_ops, txn_bytes = self.etcd.endpoint, 1000, 6_000_000
        pki = tmp / "pki"
        meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(pki / "root"))
        for site in (mesh.OBSERVER, mesh.TUNNEL_SITE):
            meshfed("ca", "site", site, "--ca", str(pki / "root"), "--out", str(pki / site))
        loader = self.start("tests.bench.scaleload", "--endpoint", endpoint, "--sites", str(n), "--seed",
                            str(a.seed), "--root", str(pki / "root"), "--pki", str(pki / "sites"),
                            "--txn-ops", str(txn_ops), "--txn-bytes", str(txn_bytes))
        await readline(loader, 600, "PKI ")
        gw_host, gw_port = "127.0.0.1", free_port()
        if a.peer_gateways == "sink":
            sink = self.start("tests.bench.scaleprobe", "sink", str(pki / "sites"))
            gw_port = int(await readline(sink, 120, "READY "))
        echo = self.start("tests.netns.node", "echo", "127.0.0.1", "0")
        echo_port = int(await readline(echo, 30, "READY "))
        tunnel_gw = free_port()
        site, export, view = tunnel_site(tmp, tunnel_gw, echo_port)
        gateway = self.start("tests.netns.node", "gateway", mesh.TUNNEL_SITE, str(pki / mesh.TUNNEL_SITE), str(view),
                             "127.0.0.1", str(tunnel_gw))
        await readline(gateway, 30, "READY ")
        assert loader.stdin is not None
        loader.stdin.write("load none\n" if a.peer_gateways == "none" else f"load {gw_host} {gw_port}\n")
        loader.stdin.flush()
        loaded = json.loads(await readline(loader, a.load_timeout, "LOADED "))
        r.put("load", f"{loaded['seconds']:.1f} s ({loaded['keys']} keys, {loaded['bytes'] / 2**20:.0f} MiB, "
                      f"{loaded['transactions']} txns)")
        r.notes.append(f"bulk load: {json.dumps(loaded)}; etcd flags: {' '.join(ETCD_FLAGS) if self.etcd else 'yours'}"
                       f"; peer gateways: {a.peer_gateways}")
        floor = self.start("tests.bench.scaleprobe", "floor", endpoint)
        await readline(floor, 60, "READY")
        publisher = HandPublisher(EtcdClient([endpoint]), Keys(), site, [export], ttl=30)
        pub_task = asyncio.create_task(publisher.run(), name="tunnel-site")
        try:
            await asyncio.wait_for(publisher.published.wait(), 30)
            await self._observe(endpoint, loader, floor)
        finally:
            pub_task.cancel()
            await asyncio.gather(pub_task, return_exceptions=True)

    async def _observe(self, endpoint: str, loader: subprocess.Popen[str], floor: subprocess.Popen[str]) -> None:
        a, r, tmp, shape = self.args, self.run, self.tmp, self.shape
        dns_port = free_port()
        config = agent_config(tmp, a, endpoint, dns_port)
        started = time.monotonic()
        agent = self.agent = AgentProcess(config, tmp / "observer").start()
        assert agent.proc is not None
        pid = agent.proc.pid
        admin = await asyncio.to_thread(agent.admin, 60)
        deadline = started + a.sync_timeout
        ready = None
        while time.monotonic() < deadline and agent.proc.poll() is None:
            got = await asyncio.to_thread(obs.fetch, admin + "/readyz", 5)
            if got.status == 200:
                ready = time.monotonic()
                break
            await asyncio.sleep(0.1)
        if ready is None:
            reason = obs.fetch(admin + "/readyz", 5).body.decode(errors="replace").strip().replace("\n", "; ")
            r.cells["ready"] = never(f"not ready after {a.sync_timeout:.0f}s ({reason[:160]}); {self._log_hint()}")
            r.cells["dns_all"] = never("agent never ready")
            for key in ("prop_spaced", "prop_rate", "dns_churn", "rtt_churn", "status_page", "registry_page"):
                r.cells[key] = skipped("agent never ready")
            r.put("rss", f"{obs.status_kib(pid, 'VmRSS') / 1024:.0f} MiB (not synced)")
            socks = obs.sockets(pid)
            r.put("listen", f"{socks['tcp_listen']} + {socks['udp']} (not synced)")
            r.put("hwm", f"{obs.status_kib(pid, 'VmHWM') / 1024:.0f} MiB", obs.status_kib(pid, 'VmHWM') <= 512 * 1024)
            return
        r.put("ready", seconds(ready - started))
        names = [mesh.dns_name(*mesh.service_id(k), zone=ZONE) for k in range(shape.services)]
        last, why = await obs.vips_answered(endpoint, dns_port, self.shape, deadline, a.sync_timeout, a.vip_prefix)
        at = time.monotonic() if last is None else last
        if last is None:
            r.cells["dns_all"] = never(why)
        else:
            r.put("dns_all", seconds(last - started), last - started <= 15)
        r.notes.append(f"sync measured {at - started:.1f}s after start: {why}")
        if last is not None:  # every name must answer too
            _, missing = await obs.sweep("127.0.0.1", dns_port, names, time.monotonic() + 60)
            if missing:
                r.cells["dns_all"] = never(f"{missing} of {len(names)} service names had no A answer 60s after the VIPs")
        r.put("cpu", f"{obs.cpu_seconds(pid):.1f} s")
        rss = obs.status_kib(pid, "VmRSS") / 1024
        r.put("rss", f"{rss:.0f} MiB" + ("" if last is not None else " (not all answered)"), rss <= 512)
        socks = obs.sockets(pid)
        r.put("listen", f"{socks['tcp_listen']} + {socks['udp']}" + ("" if a.capture else " (per-port mode)"),
              (socks["tcp_listen"] + socks["udp"] <= 100) if a.capture else None)
        r.put("tunnels", f"{socks['tcp_established']} ({socks['fds']} descriptors)")
        r.notes.append(f"sockets after sync: {socks}")
        await asyncio.sleep(2)  # idle means idle: let the start-up work finish
        status = await self._admin(admin, "/status", "status_full", None)
        rtt_at = None
        if status is not None:
            for imp in json.loads(status).get("imports", []):
                if imp["service"] == "/".join(mesh.TUNNEL_SERVICE) and imp.get("listeners"):
                    rtt_at = next(iter(imp["listeners"].values()))
        if rtt_at is None:
            r.notes.append("tunnel RTT: no egress listener for bench/echo in /status")
        await self._changes(dns_port, loader, floor, rtt_at, names)
        if a.admin:
            await self._admin(admin, "/status?limit=100", "status_page", "status_full")
            await self._admin(admin, "/registry", "registry_full", None)
            await self._admin(admin, "/registry?limit=100", "registry_page", "registry_full")
        hwm = obs.status_kib(pid, "VmHWM") / 1024
        r.put("hwm", f"{hwm:.0f} MiB", hwm <= 512)
        log = agent.log.read_text(errors="replace")
        r.notes.append(f"agent log: {log.count('expired; re-registering')} lease expiries (re-registered), "
                       f"{log.count(' WARNING ')} warnings, {log.count(' ERROR ')} errors")

    async def _changes(self, dns_port: int, loader: subprocess.Popen[str], floor: subprocess.Popen[str],
                       rtt_at: str | None, names: list[str]) -> None:
        a, r = self.args, self.run
        clusterset = [nm for k, nm in enumerate(names) if not mesh.is_headless(k)]
        names_file = self.tmp / "names.txt"
        names_file.write_text("\n".join(clusterset) + "\n")
        probe = self.start("tests.bench.scaleprobe", "probe", f"127.0.0.1:{dns_port}", str(names_file),
                           *([rtt_at] if rtt_at else []))
        await readline(probe, 30, "READY")
        prop = obs.Propagation("127.0.0.1", dns_port, give_up=a.propagation_timeout)
        floor_seen: dict[int, float] = {}
        phases: dict[str, list[int]] = {"spaced": [], "rate": []}
        phase = ["spaced"]
        commit_lag: list[float] = []
        cpu: dict[str, float] = {}
        pid = self.agent.proc.pid if self.agent is not None and self.agent.proc is not None else 0

        def read_floor() -> None:
            assert floor.stdout is not None
            for line in floor.stdout:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "F":
                    floor_seen.setdefault(int(parts[1]), float(parts[2]))

        async def command(text: str, bound: float) -> None:
            assert loader.stdin is not None
            assert loader.stdout is not None
            loader.stdin.write(text + "\n")
            loader.stdin.flush()
            deadline = time.monotonic() + bound
            while time.monotonic() < deadline:
                line = await asyncio.wait_for(asyncio.to_thread(loader.stdout.readline), deadline - time.monotonic())
                parts = line.split()
                if not parts or parts[0] == "DONE":
                    return
                if parts[0] == "C":
                    change, site, ns, name, host, addr, submitted, committed = parts[1:]
                    prop.add(int(change), mesh.host_name(host, site, ns, name, ZONE), addr, float(submitted))
                    commit_lag.append(float(committed) - float(submitted))
                    phases[phase[0]].append(int(change))

        async def measure(secs: float, least: int = 0) -> dict[str, Any]:
            assert probe.stdin is not None
            probe.stdin.write(f"measure {secs} {least}\n")
            probe.stdin.flush()
            return dict(json.loads(await readline(probe, 5 * secs + 60, "RESULT ")))

        reader = asyncio.create_task(asyncio.to_thread(read_floor), name="floor-reader")  # ends with the floor
        poller = asyncio.create_task(prop.run(), name="propagation")
        try:
            r.notes.append(await obs.settle(pid, bound=60))
            idle = await measure(a.idle_seconds, int(a.idle_seconds * 100))
            before = obs.cpu_seconds(pid)
            await command(f"spaced {a.spaced} 0.02", 120)
            await prop.settle(a.propagation_timeout)
            cpu["spaced"] = obs.cpu_seconds(pid) - before
            phase[0] = "rate"
            before = obs.cpu_seconds(pid)
            churn, _ = await asyncio.gather(measure(a.rate_seconds), command(f"rate {a.rate} {a.rate_seconds}", 120))
            await prop.settle(a.propagation_timeout)
            cpu["rate"] = obs.cpu_seconds(pid) - before
            await asyncio.sleep(1)  # the floor's last lines
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        self.background.append(reader)
        for key, changes in phases.items():
            lags = prop.lags(changes)
            flags = [floor_seen[c] - prop.committed[c] if c in floor_seen else float("inf") for c in changes]
            p50, p99, f50, f99 = pct(lags, .5), pct(lags, .99), pct(flags, .5), pct(flags, .99)
            unseen = sum(1 for x in lags if x == float("inf"))
            bound = f"> {a.propagation_timeout:.0f} s"
            r.put(f"prop_{key}", f"{seconds(p50).replace('never', bound)} / {seconds(p99).replace('never', bound)} "
                                 f"({len(changes)} changes"
                                 + (f", {unseen} not seen in {a.propagation_timeout:.0f}s" if unseen else "") + ")",
                  p99 <= 1.0 if changes else None)
            r.put(f"floor_{key}", f"{seconds(f50)} / {seconds(f99)} ({times(ratio(p50, f50))})",
                  ratio(p50, f50) <= 2 if changes else None)
        r.notes.append(f"propagation: {prop.queries} DNS polls for {len(prop.committed)} changes; the loader's "
                       f"transactions took p50 {seconds(pct(commit_lag, .5))}, p99 {seconds(pct(commit_lag, .99))}")
        r.put("cpu_change", " / ".join(f"{cpu[k] / len(phases[k]) * 1e3:.0f} ms" if phases[k] else "-"
                                       for k in ("spaced", "rate")))
        for what, bound in (("dns", 2.0), ("rtt", 1.5)):
            i, c = samples(idle, what), samples(churn, what)
            r.put(f"{what}_idle", latency(i))
            if not c:
                r.cells[f"{what}_churn"] = skipped(str(churn.get("rtt_error") or "no samples"))
                continue
            rel = ratio(pct(c, .99), pct(i, .99))
            r.put(f"{what}_churn", f"{latency(c)}, p99 {times(rel)}", rel <= bound)

    async def _admin(self, admin: str, path: str, key: str, full: str | None) -> str | None:
        """GET one admin document into row `key`; a page (`full` names the whole document's row) has a goal."""
        got = await asyncio.to_thread(obs.fetch, admin + path, self.args.admin_timeout)
        r = self.run
        if got.status != 200:
            r.cells[key] = never(f"HTTP {got.status} after {got.seconds:.1f}s: {got.body[:120]!r}")
            return None
        text = f"{seconds(got.seconds)} ({got.size / 2**20:.1f} MiB)"
        self.sizes[key] = got.size
        if full is None:
            r.put(key, text)
        else:
            paged = got.size < self.sizes.get(full, 0)
            r.put(key, text + ("" if paged else ", limit ignored: the whole document"), got.seconds <= 1.0)
        return got.body.decode()

    def _log_hint(self) -> str:
        assert self.agent is not None
        lines = [ln for ln in self.agent.log.read_text(errors="replace").splitlines()
                 if " ERROR " in ln or " WARNING " in ln or "Error" in ln]
        return f"agent log: {lines[-1][-240:]}" if lines else "no warning in the agent log"


async def main_async(args: argparse.Namespace) -> int:
    runs: list[Run] = []
    for n in args.sites:
        tmp = Path(tempfile.mkdtemp(prefix=f"meshfed-scale-{n}-"))
        started = time.monotonic()
        print(f"# {n} sites: starting (load average {obs.load_average()})", file=sys.stderr, flush=True)
        try:
            run = await Measurement(args, n, tmp).go()
        finally:
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
            if args.capture and not args.vip_interface:  # the interface this run's agent created
                subprocess.run(["ip", "link", "del", CAPTURE_INTERFACE], capture_output=True, check=False)
        run.notes.append(f"run took {time.monotonic() - started:.0f}s; load average at the end {obs.load_average()}")
        runs.append(run)
        print(table(runs), file=sys.stderr, flush=True)
    print(table(runs))
    return 0


def parser() -> argparse.ArgumentParser:
    """The benchmark's options (tests/bench/churn.py runs the same harness with its own)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 100, 1000], help="site counts (default 10 100 1000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 sites, short phases")
    parser.add_argument("--endpoints", help="an etcd host:port to use instead of starting one (must be empty)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--capture", action="store_true", help=f"capture mode: sets {CAPTURE_SETTING}")
    parser.add_argument("--vip-interface", default="", help="vm.vip_interface of the observer (default: none)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=YAML",
                        help="another setting of the observer's config (repeatable)")
    parser.add_argument("--peer-gateways", choices=("sink", "closed", "none"), default="sink",
                        help="the simulated sites' gateways: a TLS sink answering as each site (default), "
                             "a closed port, or none at all")
    parser.add_argument("--vip-prefix", default=obs.VIP_PREFIX, help="etcd prefix of one key per allocated VIP")
    parser.add_argument("--sync-timeout", type=float, default=300.0, help="bound on start to every DNS answer")
    parser.add_argument("--load-timeout", type=float, default=600.0)
    parser.add_argument("--propagation-timeout", type=float, default=60.0, help="bound on one change's lag")
    parser.add_argument("--admin-timeout", type=float, default=90.0)
    parser.add_argument("--spaced", type=int, default=100, help="changes 20 ms apart")
    parser.add_argument("--rate-seconds", type=float, default=10.0, help="seconds of the steady-rate phase")
    parser.add_argument("--rate", type=float, default=100.0, help="changes/s of the steady-rate phase")
    parser.add_argument("--no-admin", dest="admin", action="store_false", help="skip /registry and the pages")
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories (logs, configs)")
    return parser


def main() -> int:
    args = parser().parse_args()
    if args.quick:
        args.sites, args.spaced, args.rate_seconds, args.sync_timeout = [10], 20, 3.0, 60.0
        args.propagation_timeout = 20.0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
