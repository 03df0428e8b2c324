"""The demo's stage: three sites on two networks on one machine, their etcd, CA, agents and samples.

east (net-1) exports shop/web and shop/api; edge (net-1, another zone) runs a standby shop/web;
west (net-2) exports shop/cart. With root every site is a network namespace and the networks really
cannot reach each other (devkit/lab.py); without root everything runs on loopback ports.
`federation.devkit.demo` tells the story on this stage.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from federation.devkit import objects as kobj
from federation.devkit import owner
from federation.devkit.lab import Lab
from federation.pki.issuing import new_root, new_site_ca, save_root, save_site
from federation.registry.embedded import EtcdProcess

PREFIX = "mfdemo"
DEFAULT_STATE = Path(tempfile.gettempdir()) / "meshfed-demo"
ZONE = "clusterset.local"
SERVICES = {  # site -> [(service, exported port, sample port)]
    "east": [("web", 80, 8080), ("api", 80, 8081)],
    "west": [("cart", 80, 8080)],
    "edge": [("web", 80, 8080)],
}
CHECK_INTERVAL = 1.0
LEASE_TTL = 5


@dataclass
class DemoSite:
    """Where one site's pieces live in this run."""

    name: str
    network: str
    zone: str
    address: str
    """Where its samples listen (the LAN address in a namespace, 127.0.0.1 on loopback)."""
    wan: str
    """Where its gateway and admin endpoint listen."""
    ports: dict[str, int] = field(default_factory=dict)
    """sample service -> port"""
    samples: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kubernetes: bool = False
    """A Kubernetes-style site: its exports come from ServiceExports in its API stand-in."""


class Demo:
    """Builds, shows and tears down the demo mesh."""

    def __init__(self, state: Path, netns: bool, out: Any = sys.stdout, prefix: str = PREFIX,
                 lan_discovery: str | None = None, wan: int | None = 0) -> None:
        self.lan_discovery = lan_discovery
        """A site that browses its LAN for DNS-SD (_http._tcp) and exports what it finds under `lan`."""
        self.state = state
        self.netns = netns
        self.out = out
        self.lab = Lab(prefix, state, wan=wan if netns else 0)
        self.sites: dict[str, DemoSite] = {}
        self.etcd: EtcdProcess | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.python = sys.executable

    # -- building

    def up(self) -> None:
        """Network, CA, etcd, sample services and one agent per site; returns when every agent is ready."""
        # A fresh mesh every time: an etcd data dir left by an interrupted run names other peer addresses.
        self.lab.kill_all()  # processes an interrupted run recorded in its state directory
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner.record(self.state, self.lab.prefix, self.netns)  # for `meshfed demo --down` from another shell
        if self.netns:
            self.lab.up()
        for s in self.lab.sites.values():
            addr = s.lan_ip if self.netns else "127.0.0.1"
            wan = s.wan_ip if self.netns else "127.0.0.1"
            site = DemoSite(s.name, s.network, s.zone, addr, wan)
            site.ports = {svc: (sample if self.netns else 0) for svc, _, sample in SERVICES[s.name]}
            self.sites[s.name] = site
        self._make_ca()
        self.etcd = EtcdProcess(self.state / "etcd", host=self.lab.wan_root if self.netns else "127.0.0.1")
        self.etcd.start()
        self._remember(self.etcd.pid)
        for site in self.sites.values():
            for svc in site.ports:
                self.start_sample(site.name, svc)
        self.start_cluster("east")
        for site in self.sites.values():
            self.start_agent(site.name)
        for name in self.sites:
            self.wait_ready(name)

    def start_sample(self, site: str, service: str) -> None:
        """One sample service; on loopback it binds port 0 and the port it got is read from its log (a port
        picked here and handed over could be taken by another process in between)."""
        s = self.sites[site]
        log = self.state / f"{site}-sample-{service}.log"
        proc = self.lab.popen(site if self.netns else None,
                              [self.python, "-m", "federation.devkit.sample", "--listen",
                               f"{s.address}:{s.ports[service]}", "--service", service, "--site", site], log=log)
        s.samples[service] = proc

        def listening() -> bool:
            found = re.search(r" on \S+:(\d+)$", log.read_text(errors="replace"), re.M) if log.exists() else None
            if found is None and proc.poll() is not None:
                raise RuntimeError(f"sample {service} of site {site} exited: {log.read_text(errors='replace')}")
            if found is not None:
                s.ports[service] = int(found.group(1))
            return found is not None

        self.wait_for(listening, 20, f"sample {service} of site {site}")

    def start_cluster(self, site: str) -> None:
        """The development API server of a Kubernetes-style site, holding its Services, slices and exports."""
        s = self.sites[site]
        objects: list[dict[str, Any]] = []
        for svc, port, _ in SERVICES[site]:
            objects.append(kobj.service("shop", svc, ports=[{"name": "http", "port": port, "protocol": "TCP",
                                                               "targetPort": s.ports[svc]}]))
            objects.append(kobj.endpointslice("shop", svc, name=f"{svc}-demo",
                                              endpoints=[kobj.endpoint(s.address, zone=s.zone)],
                                              ports=[{"name": "http", "port": s.ports[svc], "protocol": "TCP"}]))
            objects.append(kobj.serviceexport("shop", svc))
        (self.state / f"{site}-objects.json").write_text(json.dumps(objects))
        kubeconfig = self.state / f"{site}-kubeconfig"
        kubeconfig.unlink(missing_ok=True)
        argv = [self.python, "-m", "federation.devkit.apiserver", "serve", "--kubeconfig", str(kubeconfig),
                "--objects", str(self.state / f"{site}-objects.json")]
        self.lab.popen(site if self.netns else None, argv, log=self.state / f"{site}-apiserver.log")
        self.wait_for(kubeconfig.exists, 20, f"{site}'s development API server")
        s.kubernetes = True

    def kubectl_argv(self, site: str, *args: str) -> list[str]:
        """The kubectl command line for a Kubernetes-style site's API server (inside its namespace, if any)."""
        argv = ["kubectl", "--kubeconfig", str(self.state / f"{site}-kubeconfig"), *args]
        return ["ip", "netns", "exec", self.lab.ns(site), *argv] if self.netns else argv

    def kubectl(self, site: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run kubectl against a Kubernetes-style site's API server, as an operator would."""
        return subprocess.run(self.kubectl_argv(site, *args), capture_output=True, text=True, timeout=30,
                              check=False)

    def set_endpoint_ready(self, site: str, service: str, ready: bool) -> None:
        """What the EndpointSlice controller does when a pod stops or starts: flip the endpoint's readiness."""
        argv = [self.python, "-m", "federation.devkit.apiserver", "set-ready", "--kubeconfig",
                str(self.state / f"{site}-kubeconfig"), "--namespace", "shop", "--slice", f"{service}-demo",
                "--ready", "true" if ready else "false"]
        res = self.lab.run(site, argv) if self.netns else subprocess.run(argv, capture_output=True, text=True,
                                                                          timeout=30, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"updating {site}'s EndpointSlice failed: {res.stderr}")

    def stop_sample(self, site: str, service: str) -> None:
        proc = self.sites[site].samples.pop(service)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def start_agent(self, site: str) -> None:
        cfg = self.write_config(site)
        (self.state / site / "admin.addr").unlink(missing_ok=True)
        self.agents[site] = self.lab.popen(site if self.netns else None,
                                           [self.python, "-m", "federation", "agent", "--config", str(cfg)],
                                           log=self.state / f"{site}-agent.log")

    def kill_agent(self, site: str) -> None:
        proc = self.agents.pop(site)
        proc.kill()
        proc.wait()

    def write_config(self, name: str) -> Path:
        s = self.sites[name]
        assert self.etcd is not None
        services = [
            {"namespace": "shop", "name": svc, "address": s.address,
             "ports": [{"name": "http", "port": port, "target_port": s.ports[svc]}],
             "check": {"kind": "tcp", "interval": CHECK_INTERVAL, "timeout": 0.5, "rise": 1, "fall": 1}}
            for svc, port, _ in SERVICES[name]
        ]  # fmt: skip
        dns_addrs = ["127.0.0.1:53", f"{s.address}:53"] if self.netns else ["127.0.0.1:0"]
        config: dict[str, Any] = {
            "site": {"name": name, "network": s.network, "region": "demo", "zone": s.zone,
                     "kind": "kubernetes" if s.kubernetes else "vm", "gateway_address": s.wan},
            "state_dir": str(self.state / name),
            "registry": {"endpoints": [self.etcd.endpoint], "lease_ttl": LEASE_TTL},
            "admin": {"address": s.wan, "port": 15000 if self.netns else 0},
            "gateway": {"ca_dir": str(self.state / "ca" / name), "listen_address": s.wan,
                        "listen_port": 15443 if self.netns else 0},
            "dns": {"udp": dns_addrs, "tcp": dns_addrs},
            "vm": {"services": services, "vip_interface": "meshfed0" if self.netns else ""},
        }  # fmt: skip
        if name == self.lan_discovery:
            config["vm"]["discovery"] = {"enabled": True, "types": ["_http._tcp.local."], "namespace": "lan",
                                         "interfaces": [s.address]}
        if s.kubernetes:
            del config["vm"]
            config["kubernetes"] = {"enabled": True, "kubeconfig": str(self.state / f"{name}-kubeconfig"),
                                    "egress_address": s.address}
            config["gateway"]["egress_address"] = s.address
        path = self.state / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def wait_ready(self, site: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.agents[site]
            if proc.poll() is not None:
                raise RuntimeError(f"agent {site} exited: {self._tail(site)}")
            with contextlib.suppress(OSError, ValueError), get_url(self.admin(site) + "/readyz") as resp:
                if resp.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"agent {site} not ready after {timeout:.0f}s: {self._tail(site)}")

    def down(self) -> None:
        """Stop every process and remove every namespace; keep nothing outside the state directory."""
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.agents.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        self.agents.clear()
        if self.etcd is not None:
            self.etcd.stop()
        if self.netns:
            self.lab.down()
        else:  # a loopback demo made no namespaces: never touch those of a demo running beside it
            self.lab.kill_all()

    # -- looking

    def admin(self, site: str) -> str:
        addr = (self.state / site / "admin.addr").read_text().strip()
        return f"http://{addr}"

    def status(self, site: str) -> dict[str, Any]:
        with get_url(self.admin(site) + "/status") as resp:
            return dict(json.load(resp))

    def dns_server(self, site: str) -> str:
        """host:port of the site's DNS (127.0.0.1:53 inside a namespace)."""
        if self.netns:
            return "127.0.0.1:53"
        return str(self.status(site)["dns"]["udp"][0])

    def resolve(self, site: str, name: str, rtype: str = "A") -> subprocess.CompletedProcess[str]:
        argv = [self.python, "-m", "federation", "resolve", name, "--type", rtype, "--server", self.dns_server(site)]
        if self.netns:
            return self.lab.run(site, argv)
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    def url(self, site: str, service: str) -> str:
        """What a client in `site` uses: the DNS name (VIP) in a namespace, the egress port on loopback."""
        if self.netns:
            return f"http://{service}.shop.svc.{ZONE}/"
        for imp in self.status(site)["imports"]:
            if imp["service"] == f"shop/{service}" and imp["listeners"].get("http"):
                return f"http://{imp['listeners']['http']}/"
        raise RuntimeError(f"no egress listener for shop/{service} in {site}")

    def curl(self, site: str, url: str, timeout: float = 5.0) -> tuple[bool, str, float]:
        """(ok, body or error, seconds) of one GET from inside `site`."""
        argv = ["curl", "-sS", "--max-time", str(timeout), "-w", "\n%{time_total}", url]
        if self.netns:
            res = self.lab.run(site, argv, timeout=timeout + 5)
        else:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5, check=False)
        if res.returncode != 0:
            return False, res.stderr.strip() or f"curl exited {res.returncode}", 0.0
        body, _, secs = res.stdout.rpartition("\n")
        return True, body.strip(), float(secs)

    def registry_ls(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """`meshfed registry ls` against the demo's etcd (extra flags, e.g. --json)."""
        assert self.etcd is not None
        return subprocess.run([self.python, "-m", "federation", "registry", "ls", "--endpoints", self.etcd.endpoint,
                               *extra], capture_output=True, text=True, timeout=30, check=False)

    def wait_curl(self, site: str, url: str, timeout: float = 20.0) -> tuple[bool, str, float]:
        """The first successful GET within `timeout` (listeners and VIPs follow the registry within moments)."""
        deadline = time.monotonic() + timeout
        while True:
            ok, body, secs = self.curl(site, url)
            if ok or time.monotonic() > deadline:
                return ok, body, secs
            time.sleep(0.2)

    def wait_for(self, check: Any, timeout: float, what: str) -> float:
        start = time.monotonic()
        while not check():
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.1)
        return time.monotonic() - start

    # -- private

    def _make_ca(self) -> None:
        import datetime as dt

        now = dt.datetime.now(dt.UTC)
        root = new_root("demo.meshfed.example", now)
        save_root(self.state / "ca" / "root", root, force=True)
        for name in self.sites:
            save_site(self.state / "ca" / name, new_site_ca(root, name, now), force=True)

    def _remember(self, pid: int | None) -> None:
        if pid is not None:
            with open(self.state / "lab.pids", "a") as f:
                f.write(f"{pid}\n")

    def _tail(self, site: str) -> str:
        with contextlib.suppress(OSError):
            return (self.state / f"{site}-agent.log").read_text()[-3000:]
        return ""


def get_url(url: str) -> Any:
    """GET from an agent's admin endpoint (always http:// built here, never user input)."""
    return urllib.request.urlopen(url, timeout=5)  # noqa: S310
