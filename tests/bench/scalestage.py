"""The stage of the scale benchmark: the processes it starts (by PID, stopped by PID) and the files they read.

etcd flags an operator sizing for 1,000 sites would set, the observer's config, the tunnel site's
records and view, and small helpers to start a helper process and read its protocol lines.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from federation.core.records import Endpoint, EndpointPort, Gateway, ServiceExport, ServicePort, Site
from federation.core.view import MeshView
from federation.pki.issuing import cert_pem, load_site
from tests.bench import scalemesh as mesh
from tests.integration.agentproc import write_config
from tests.netns.node import dump_view

ETCD_FLAGS = (
    "--max-txn-ops=1024",  # default 128: bulk writes of a fleet in few transactions
    "--max-request-bytes=8388608",  # default 1.5 MiB: a transaction of 1,000 export records is ~1.5 MB
    "--quota-backend-bytes=8589934592",  # default 2 GiB: 1M endpoints with history and headroom
)
CAPTURE_SETTING = "vm.egress_capture=on"
CAPTURE_INTERFACE = "mfscale0"
"""The VIP interface a --capture run uses when --vip-interface names none (capture needs VIPs)."""
"""What --capture sets in the agent's config; change it to the setting's name once capture mode lands."""


def spawn(*cmd: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kw)


def stop(proc: subprocess.Popen[str] | None) -> None:
    """End one process we started, by its PID: close its input, SIGTERM, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def readline(proc: subprocess.Popen[str], timeout: float, want: str) -> str:
    """The next stdout line of `proc` that starts with `want` (other lines are skipped), within `timeout`."""
    assert proc.stdout is not None
    out = proc.stdout
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = deadline - time.monotonic()
        line = await asyncio.wait_for(asyncio.to_thread(out.readline), max(left, 0.1))
        if not line:
            raise RuntimeError(f"{proc.args[2:4]} exited with {proc.wait()}")
        if line.startswith(want):
            return line[len(want):].strip()
    raise TimeoutError(f"no {want!r} line within {timeout:.0f}s")


def meshfed(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "federation", *argv], check=True, capture_output=True, timeout=60)


def agent_config(tmp: Path, args: argparse.Namespace, endpoint: str, dns_port: int) -> Path:
    path = write_config(tmp / "observer.yaml", mesh.OBSERVER, [endpoint], tmp / "observer", [], ttl=10)
    data = yaml.safe_load(path.read_text())
    data["site"].update(network=mesh.OBSERVER_NETWORK, region="region-0", zone="zone-a")
    data["registry"]["timeout"] = 5
    data["dns"] = {"udp": [f"127.0.0.1:{dns_port}"], "tcp": [f"127.0.0.1:{dns_port}"],
                   "answer_unserved_vips": True}  # the probe asks for VIPs it never connects to
    data["gateway"] = {"ca_dir": str(tmp / "pki" / "observer"), "listen_address": "127.0.0.1", "listen_port": 0}
    data["vm"] = {"vip_interface": args.vip_interface or (CAPTURE_INTERFACE if args.capture else ""),
                  # a fifth of 5,000 services headless, at ~20 sites of 10 endpoints each, nearly all on other
                  # networks: ~190,000 endpoint addresses, more than the default 240.241.0.0/16 holds (65,534)
                  "endpoint_ranges": ["241.0.0.0/8"]}
    for item in args.set + ([CAPTURE_SETTING] if args.capture else []):
        dotted, _, raw = item.partition("=")
        section, _, name = dotted.partition(".")
        data.setdefault(section, {})[name] = yaml.safe_load(raw)
    path.write_text(yaml.safe_dump(data))
    return path


def tunnel_site(tmp: Path, gw_port: int, echo_port: int) -> tuple[Site, ServiceExport, Path]:
    """The "tunnel" site's record and echo export, and the view file its gateway process serves."""
    chain = cert_pem(load_site(tmp / "pki" / mesh.TUNNEL_SITE).cert).decode()
    site = Site(mesh.TUNNEL_SITE, "net-tunnel", mesh.locality(1), gateways=(Gateway("gw", "127.0.0.1", gw_port),),
                ca_chain=chain)
    ns, name = mesh.TUNNEL_SERVICE
    export = ServiceExport(mesh.TUNNEL_SITE, ns, name, (ServicePort("tcp", 7),),
                           endpoints=(Endpoint(("127.0.0.1",), (EndpointPort("tcp", echo_port),)),))
    observer = Site(mesh.OBSERVER, mesh.OBSERVER_NETWORK,
                    ca_chain=cert_pem(load_site(tmp / "pki" / mesh.OBSERVER).cert).decode())
    view = tmp / "tunnel-view.json"
    view.write_text(dump_view(MeshView(sites={s.name: s for s in (site, observer)},
                                       exports={(mesh.TUNNEL_SITE, ns, name): export})))
    return site, export, view
