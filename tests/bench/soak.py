"""Soak: N concurrent connections through egress and gateway in network namespaces, renewed at a steady rate.

    .venv/bin/python -m tests.bench.soak [--minutes 10] [--connections 5000] [--rate 500 [--rate 1000]]
                                         [--skip-direct] [--keep]

Sites west (net-2, the clients' site) and east (net-1, the sample service) run real agents in their
namespaces, with etcd on the host; `near`, a namespace on east's network without an agent, is where the
reference runs: the same load made directly to the sample, no meshfed in the path. The load
(`tests.bench.soakload`) opens connections at --rate per second until --connections are open, renews
each after connections/rate seconds, and GETs on each. Every 10 s the script samples each agent's RSS,
open descriptors and CPU. It prints failures, latency p50/p99 against the reference, memory per
connection, the RSS slope while the count is flat, RSS after the connections closed, the connections
shed, and whether a lease expired or a site was withdrawn (a watch on the registry). Needs root.
Bounded: per rate and path, the ramp, --minutes of renewals, --settle seconds after; every process is
stopped by PID, and the namespaces (prefix mfsk) are deleted on exit, on failure, on Ctrl-C, SIGTERM and
SIGHUP (a leftover of a killed run is removed by the next run's setup, or `ip netns del`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from federation.devkit.lab import Lab, LabSite
from federation.registry.embedded import EtcdProcess
from tests.bench.soakreport import summarize

SITES = (
    LabSite("east", "net-1", "198.19.0.11", "198.18.1.11", "zone-a"),
    LabSite("west", "net-2", "198.19.0.12", "198.18.2.12", "zone-a"),
    LabSite("near", "net-1", "198.19.0.13", "198.18.1.13", "zone-a"),
)
SAMPLE_PORT = 8080
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SAMPLE_EVERY = 10.0
"""Seconds between samples of each process's RSS, descriptors and CPU."""
TTL = 10
"""The agents' lease TTL: the default, so that a lease in danger here is one in production."""


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    cpu: float


@dataclass
class Run:
    path: str
    rate: float
    lines: list[dict[str, Any]] = field(default_factory=list)
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    died: set[str] = field(default_factory=set)
    lease_left: dict[str, float] = field(default_factory=dict)
    """The least lease time left each agent reported at a sample (its `/status`)."""
    """Processes (agents, sample) that exited during the run."""


class Stopped(BaseException):
    """A stop signal arrived: unwinds through every `finally`, like KeyboardInterrupt."""


def proc_sample(pid: int, t: float) -> Sample | None:
    """RSS, open descriptors and CPU seconds of `pid`; None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) * 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return Sample(t, rss, fds, cpu)


class Soak:
    def __init__(self, state: Path, args: argparse.Namespace) -> None:
        self.state = state
        self.args = args
        self.lab = Lab("mfsk", state / "lab", SITES, wan=None)
        self.etcd: EtcdProcess | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.python = sys.executable

    # -- set up

    def up(self) -> None:
        self.lab.up()
        self.etcd = EtcdProcess(self.state / "etcd", host=self.lab.wan_root)
        self.etcd.start()
        ca = self.state / "ca"
        self._meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca / "root"))
        for site in ("east", "west"):
            self._meshfed("ca", "site", site, "--ca", str(ca / "root"), "--out", str(ca / site))
        self.sample = self.lab.popen("east", [self.python, "-m", "federation.devkit.sample", "--listen",
                                              f"{self.site('east').lan_ip}:{SAMPLE_PORT}", "--service", "web",
                                              "--site", "east"], log=self.state / "sample.log")
        for site in ("east", "west"):
            cfg = self._config(site)
            self.agents[site] = self.lab.popen(site, [self.python, "-m", "federation", "agent", "--config", str(cfg)],
                                               log=self.state / f"{site}-agent.log")
        for site in ("east", "west"):
            self._wait(lambda s=site: self._get(s, "/readyz")[0] == 200, 60, f"{site} ready")
        self._wait(lambda: self.listener() is not None, 60, "west's egress listener for shop/web")

    def site(self, name: str) -> LabSite:
        return self.lab.sites[name]

    def _config(self, name: str) -> Path:
        s = self.site(name)
        assert self.etcd is not None
        config: dict[str, Any] = {
            "site": {"name": name, "network": s.network, "zone": s.zone, "gateway_address": s.wan_ip},
            "state_dir": str(self.state / name),
            "registry": {"endpoints": [self.etcd.endpoint], "lease_ttl": TTL},
            "admin": {"address": s.wan_ip, "port": 15000},
            "gateway": {"ca_dir": str(self.state / "ca" / name), "listen_address": s.wan_ip, "listen_port": 15443},
            "dns": {"udp": ["127.0.0.1:53"], "tcp": ["127.0.0.1:53"], "answer_unserved_vips": True},
            "vm": {"vip_interface": ""},
        }
        if name == "east":
            config["exports"] = [{"namespace": "shop", "name": "web", "ports": [{"name": "http", "port": 80}],
                                  "endpoints": [{"addresses": [s.lan_ip], "ports": {"http": SAMPLE_PORT}}]}]
        path = self.state / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def listener(self) -> str | None:
        code, body = self._get("west", "/status")
        if code != 200:
            return None
        for imp in json.loads(body)["imports"]:
            if imp["service"] == "shop/web" and imp["listeners"].get("http"):
                return str(imp["listeners"]["http"])
        return None

    def down(self) -> None:
        """Stop every process this run started (by PID) and delete the lab's namespaces, links and files."""
        try:
            self.lab.down()
        finally:
            if self.etcd is not None:
                self.etcd.stop()

    # -- one run

    def run(self, path: str, rate: float) -> Run:
        """One bounded load on `path` ("meshfed": west's egress listener; "direct": the sample from `near`)."""
        args = self.args
        run = Run(path, rate)
        if path == "meshfed":
            where, target, pids = "west", self.listener(), {s: p.pid for s, p in self.agents.items()}
        else:
            where, target, pids = "near", f"{self.site('east').lan_ip}:{SAMPLE_PORT}", {}
        if target is None:
            raise RuntimeError("west has no egress listener for shop/web any more")
        pids["sample"] = self.sample.pid
        run.samples = {name: [] for name in pids}
        log = self.state / f"load-{path}-{rate:.0f}.log"
        watch = self._watch_sites(rate) if path == "meshfed" else None
        leases = self._leases() if path == "meshfed" else {}
        start = time.monotonic()
        stop = threading.Event()

        def sample_all() -> None:
            for name, pid in pids.items():
                got = proc_sample(pid, time.monotonic() - start)
                if got is None:
                    run.died.add(name)
                else:
                    run.samples[name].append(got)

        def sampler() -> None:
            while not stop.is_set():
                sample_all()
                for site in ("east", "west") if path == "meshfed" else ():
                    left = self._status(site).get("registry", {}).get("leaseRemainingSeconds")
                    if left is not None:
                        run.lease_left[site] = min(run.lease_left.get(site, float(TTL)), float(left))
                stop.wait(SAMPLE_EVERY)

        thread = threading.Thread(target=sampler, name="soak-sampler", daemon=True)
        thread.start()
        try:
            load = self.lab.popen(where, [self.python, "-m", "tests.bench.soakload", "--target", target,
                                          "--connections", str(args.connections), "--rate", str(rate),
                                          "--seconds", str(args.minutes * 60)], log=log)
            ramp = args.connections / rate
            run.phases = {"flat_from": ramp + 15, "flat_to": ramp + args.minutes * 60}
            load.wait(timeout=ramp + args.minutes * 60 + 120)
            run.phases["closed"] = time.monotonic() - start
            # Pooled tunnels idle out (gateway.pool_idle 60 s) and the burst's memory goes back.
            stop.wait(args.settle if path == "meshfed" else min(args.settle, 10))
        finally:
            stop.set()
            thread.join()
            if watch is not None:
                watch.terminate()
                watch.wait(10)
        sample_all()
        run.lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        if path == "meshfed":
            run.metrics = {s: self._get(s, "/metrics")[1] for s in ("east", "west")}
            run.phases["site_deletes"] = float(_site_deletes(self.state / f"watch-{rate:.0f}.log"))
            run.phases["leases_changed"] = float(sum(1 for s, lease in self._leases().items()
                                                     if leases.get(s) != lease))
        return run

    def _watch_sites(self, rate: float) -> subprocess.Popen[bytes]:
        assert self.etcd is not None
        out = open(self.state / f"watch-{rate:.0f}.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(["etcdctl", f"--endpoints={self.etcd.endpoint}", "watch", "--prefix",
                                     "/meshfed/v1/sites/"], stdout=out, stderr=subprocess.STDOUT,
                                    env={"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        finally:
            out.close()

    def _leases(self) -> dict[str, str]:
        return {s: str(self._status(s).get("registry", {}).get("lease")) for s in ("east", "west")}

    def _status(self, site: str) -> dict[str, Any]:
        code, body = self._get(site, "/status")
        return dict(json.loads(body)) if code == 200 else {}

    # -- helpers

    def _get(self, site: str, path: str) -> tuple[int, str]:
        url = f"http://{self.site(site).wan_ip}:15000{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def _wait(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def _meshfed(self, *args: str) -> None:
        subprocess.run([self.python, "-m", "federation", *args], check=True, capture_output=True, timeout=60)


def _site_deletes(log: Path) -> int:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return sum(1 for i, line in enumerate(lines[:-1]) if line == "DELETE"
               and lines[i + 1].count("/") == 4)  # /meshfed/v1/sites/<site>: the site record itself


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="renewals after the ramp, per rate and path")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--rate", type=float, action="append",
                        help="connections opened (and closed) per second; repeat for several (default 500)")
    parser.add_argument("--settle", type=float, default=70.0,
                        help="seconds after the load before the last sample (pooled tunnels idle out at 60 s)")
    parser.add_argument("--skip-direct", action="store_true", help="no reference run")
    parser.add_argument("--keep", action="store_true", help="keep the state directory (logs, runs.json)")
    args = parser.parse_args(argv)
    rates = args.rate or [500.0]
    if args.connections < 1 or any(r <= 0 for r in rates) or not 0 < args.minutes <= 60:
        parser.error("--connections and --rate must be positive, --minutes in (0, 60]")
    why = Lab.available()
    if why is not None:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the agents and the load inherit it
    state = Path(tempfile.mkdtemp(prefix="meshfed-soak-"))
    soak = Soak(state, args)

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    try:
        soak.up()
        runs: list[Run] = []
        for rate in rates:
            runs.append(soak.run("meshfed", rate))
            if not args.skip_direct:
                runs.append(soak.run("direct", rate))
        (state / "runs.json").write_text(json.dumps([dataclasses.asdict(r) for r in runs], default=sorted))
        print(summarize(runs, args.connections))
    except Stopped as exc:
        print(f"soak: stopped by {exc}, cleaning up", file=sys.stderr)
        return 130
    finally:
        for sig in STOP_SIGNALS:  # the teardown runs to its end: a second Ctrl-C does not cut it short
            signal.signal(sig, signal.SIG_IGN)
        soak.down()
        if args.keep:
            print(f"state and logs in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
