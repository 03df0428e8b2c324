"""The `partition` fault of tests.bench.failover: sites in network namespaces, east's WAN link down, then up.

The lab is federation.devkit.lab's (prefix mffo, 198.18.0.0/15): west on net-2, east and edge on net-1,
each with a WAN side on one bridge; etcd on the host's WAN address. Each site's endpoint is a named
server in its namespace at its LAN address; west's egress listens on west's WAN address, where this
process (on the host) connects. `ip link set wan down` in east's namespace drops every packet to and from
east (no reset: a black hole for west's tunnels, and east's agent loses the registry); `up` heals it.
Every process is started through the lab (by PID) and the namespaces are removed on exit, on failure, on
Ctrl-C, SIGTERM and SIGHUP (a leftover of a killed run is removed by the next run's setup).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from federation.devkit.lab import DEFAULT_SITES, Lab
from federation.registry.embedded import EtcdProcess
from tests.bench.failover import MODES, Run, apply_policy, both_seen, drive, listener, policy_actions, site_fields
from tests.integration.agentproc import AgentProcess, write_config

ENDPOINT_PORT = 8080
GATEWAY_PORT = 15443


class LabAgent(AgentProcess):
    """`meshfed agent` inside a site's namespace, started (and recorded for teardown) by the lab."""

    def __init__(self, lab: Lab, site: str, config: Path, state_dir: Path) -> None:
        super().__init__(config, state_dir)
        self.lab = lab
        self.site = site

    def start(self, open_files: tuple[int, int] | None = None) -> LabAgent:
        (self.state_dir / "admin.addr").unlink(missing_ok=True)
        self.proc = self.lab.popen(self.site, [sys.executable, "-m", "federation", "agent", "--config",
                                               str(self.config)], log=self.log)
        return self


def link(lab: Lab, site: str, state: str) -> None:
    subprocess.run(["ip", "-n", lab.ns(site), "link", "set", "wan", state], check=True, capture_output=True,
                   timeout=20)


async def partitions(tmp: Path, modes: list[str], args: argparse.Namespace) -> list[Run]:
    """One `partition` run per mode, in one lab; [] (and a note) where namespaces cannot be made."""
    why = Lab.available()
    if why is not None:
        print(f"partition: skipped, {why}", flush=True)
        return []
    lab = Lab("mffo", tmp / "lab", DEFAULT_SITES, wan=None)
    etcd: EtcdProcess | None = None
    runs = []
    try:
        await asyncio.to_thread(lab.up)
        etcd = EtcdProcess(data_dir=tmp / "lab-etcd", host=lab.wan_root)
        await asyncio.to_thread(etcd.start)
        for site in ("east", "edge"):
            lab.popen(site, [sys.executable, "-m", "tests.bench.failover", "--serve", site,
                             f"{lab.sites[site].lan_ip}:{ENDPOINT_PORT}"], log=tmp / f"lab-{site}-server.log")
        for mode in modes:
            print(f"running: partition, {mode} ...", flush=True)
            runs.append(await one(tmp, lab, etcd, mode, args))
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            link(lab, "east", "up")
        await asyncio.to_thread(lab.down)
        if etcd is not None:
            await asyncio.to_thread(etcd.stop)
    return runs


async def one(tmp: Path, lab: Lab, etcd: EtcdProcess, mode: str, args: argparse.Namespace) -> Run:
    prefix = f"/bench-partition-{mode.replace(' ', '-').replace(':', '')}"
    agents: dict[str, LabAgent] = {}
    run = Run("partition", mode)
    try:
        for name in ("east", "edge", "west"):
            s = lab.sites[name]
            exports = [] if name == "west" else [{
                "namespace": "shop", "name": "web", "ports": [{"name": "tcp", "port": 80}],
                "endpoints": [{"addresses": [s.lan_ip], "ports": {"tcp": ENDPOINT_PORT}}]}]
            state = tmp / prefix.strip("/") / name
            state.mkdir(parents=True)
            gateway: dict[str, Any] = {"ca_dir": str(tmp / f"ca-{name}"), "listen_address": s.wan_ip,
                                       "listen_port": GATEWAY_PORT, "egress_address": s.wan_ip}
            cfg = write_config(state.parent / f"{name}.yaml", name, [etcd.endpoint], state, exports, ttl=10,
                               registry={"prefix": prefix}, admin={"address": s.wan_ip, "port": 0}, gateway=gateway)
            site_fields(cfg, network=s.network, gateway_address=s.wan_ip)
            agents[name] = LabAgent(lab, name, cfg, state).start()
        for agent in agents.values():
            await asyncio.to_thread(agent.admin, 120)  # a busy shared host: starting can take a while
            await asyncio.to_thread(agent.wait_ready, 60)
        addr = await listener(agents["west"])
        if mode in MODES:
            await apply_policy(tmp, etcd, prefix, MODES[mode], agents["west"])
        await both_seen(addr, args.patience)
        await drive(addr, run, args, lambda: link(lab, "east", "down"), lambda: link(lab, "east", "up"))
        run.actions = await policy_actions(agents["west"])
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            link(lab, "east", "up")
        for agent in agents.values():
            with contextlib.suppress(AssertionError):
                await asyncio.to_thread(agent.stop)
    return run
