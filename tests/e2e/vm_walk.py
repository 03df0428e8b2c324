"""A real run of docs/install-vm.md (run by hand as root: python -m tests.e2e.vm_walk): vm-b installed with
`meshfed vm install` into the real root, reaching vm-a's web by name; prints the transcript the doc shows."""

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import yaml

from federation.devkit.lab import Lab, LabSite
from federation.pki.issuing import new_root, new_site_ca, save_root, save_site
from federation.registry.embedded import EtcdProcess

W = Path("/tmp/walk/state")
W.mkdir(parents=True, exist_ok=True)
PY = sys.executable
MF = str(Path(PY).parent / "meshfed")
lab = Lab(
    "mfw",
    W,
    sites=(
        LabSite("vm-a", "net-a", "198.19.0.21", "198.18.1.21", "z1"),
        LabSite("vm-b", "net-b", "198.19.0.22", "198.18.2.22", "z1"),
    ),
    wan=None,
)
lab.up()
etcd = EtcdProcess(W / "etcd", host=lab.wan_root)
etcd.start()
now = dt.datetime.now(dt.UTC)
root = new_root("mesh.example", now)
save_root(W / "mesh-ca", root, force=True)
for s in ("vm-a", "vm-b"):
    save_site(W / f"{s}-site", new_site_ca(root, s, now), force=True)
a, b = lab.sites["vm-a"], lab.sites["vm-b"]


def sh(site, cmd, show=True):
    argv = ["ip", "netns", "exec", lab.ns(site), "bash", "-c", cmd] if site else ["bash", "-c", cmd]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if show:
        print(f"[{site or 'host'}]# {cmd}")
        out = (r.stdout + r.stderr).rstrip()
        if out:
            print(out)
    return r


try:
    # vm-a: another site of the mesh, exporting web (a small HTTP server) with a health check.
    lab.popen(
        "vm-a", [PY, "-m", "federation.devkit.sample", "--listen", f"{a.lan_ip}:8080", "--service", "web", "--site", "vm-a"]
    )
    cfg_a = {
        "site": {"name": "vm-a", "network": "net-a", "gateway_address": a.wan_ip},
        "state_dir": str(W / "vm-a"),
        "registry": {"endpoints": [etcd.endpoint]},
        "gateway": {"ca_dir": str(W / "vm-a-site")},
        "vm": {
            "address": a.lan_ip,
            "services": [
                {
                    "namespace": "shop",
                    "name": "web",
                    "ports": [{"name": "http", "port": 8080}],
                    "check": {"kind": "http", "path": "/", "interval": 2, "timeout": 1},
                }
            ],
        },
    }
    (W / "vm-a.yaml").write_text(yaml.safe_dump(cfg_a))
    lab.popen("vm-a", [MF, "agent", "--config", str(W / "vm-a.yaml")], log=W / "vm-a.log")

    print("### 1. install on vm-b (no systemd here: --no-start, the unit's ExecStart is run by hand below)")
    sh(
        "vm-b",
        f"{MF} vm install --no-venv --no-start --site vm-b --network net-b --registry {etcd.endpoint} "
        f"--bundle {W}/vm-b-site --dns resolvconf",
    )
    sh("vm-b", "ls -l /etc/meshfed /etc/meshfed/site; grep -n ExecStart /etc/systemd/system/meshfed-agent.service")
    # The operator's edit (step 3): this VM is reached on its wan address.
    text = (
        Path("/etc/meshfed/agent.yaml")
        .read_text()
        .replace("  # gateway_address: 203.0.113.10", f"  gateway_address: {b.wan_ip}")
    )
    Path("/etc/meshfed/agent.yaml").write_text(text)
    print(f"(edited /etc/meshfed/agent.yaml: site.gateway_address: {b.wan_ip})")
    print("### 4. start and look")
    lab.popen("vm-b", [MF, "agent", "--config", "/etc/meshfed/agent.yaml"], log=W / "vm-b.log")
    for _ in range(100):
        if (
            sh(
                "vm-b", "meshfed status 2>/dev/null | grep -q 'shop/web.*http='".replace("meshfed", MF), show=False
            ).returncode
            == 0
        ):
            break
        time.sleep(0.2)
    sh("vm-b", f"{MF} status")
    print("### 5. reach the mesh by name")
    sh("vm-b", "ip -br addr show meshfed0")
    sh("vm-b", f"{MF} resolve web.shop.svc.clusterset.local")
    sh("vm-b", "curl -s web.shop.svc.clusterset.local:8080")
    sh("vm-b", f"curl -sS --max-time 2 http://{a.lan_ip}:8080/ || true    # vm-a's address itself: another network")
    print("### 7. stop web on vm-a; vm-b no longer gets it; start it again")
    sh("vm-a", "pkill -f 'federation.devkit.sample --listen 198.18.1.21:8080'; true")
    t0 = time.monotonic()
    for _ in range(100):
        r = sh("vm-b", f"{MF} status --json", show=False)
        if '"ready": 0' in r.stdout:
            break
        time.sleep(0.2)
    print(f"(vm-b's view showed web not ready {time.monotonic() - t0:.1f}s after it stopped; check interval 2s)")
    sh("vm-b", "curl -sS --max-time 3 web.shop.svc.clusterset.local:8080 || true")
    print("### 8. uninstall")
    lab.kill_all()
    sh("vm-b", f"{MF} vm uninstall")
    sh("vm-b", "ls /etc/meshfed /opt/meshfed /var/lib/meshfed 2>&1; ip -br addr show meshfed0 2>&1 || true")
finally:
    lab.kill_all()
    etcd.stop()
    lab.down()
