"""What `meshfed vm install` puts on a VM, and taking it away again.

`render` is pure (options and the bundle's bytes in; files with contents and modes out); `install` and
`uninstall` are the thin filesystem shell. Paths are relative to a root directory, so tests (and image
builders, like DESTDIR) can install into a temporary tree; file contents always name the real paths.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = Path("/opt/meshfed")
CONFIG_DIR = Path("/etc/meshfed")
CONFIG = CONFIG_DIR / "agent.yaml"
SITE_DIR = CONFIG_DIR / "site"
STATE_DIR = Path("/var/lib/meshfed")
UNIT = Path("/etc/systemd/system/meshfed-agent.service")
RESOLVED_DROPIN = Path("/etc/systemd/resolved.conf.d/meshfed.conf")
BUNDLE_FILES = {"site.crt": 0o644, "site.key": 0o600, "trust-bundle.pem": 0o644}
"""The files `meshfed ca site` writes, with the modes they get here (keys 0600, DESIGN.md)."""
DNS_MODES = ("resolved", "resolvconf", "none")

UNIT_TEXT = """\
# Written by `meshfed vm install`; replaced on every install, so put local changes in a drop-in
# (systemctl edit meshfed-agent).
[Unit]
Description=meshfed agent: federates this VM's services with the mesh
Documentation=https://github.com/meshfed/meshfed/blob/main/docs/install-vm.md
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
ExecStart=/opt/meshfed/bin/meshfed agent --config /etc/meshfed/agent.yaml
# `systemctl reload meshfed-agent`: the agent reads its config again and applies what can change live.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
TimeoutStopSec=30
# Root, but only with what the agent needs: the VIP interface and the egress capture rules (NET_ADMIN),
# DNS on port 53 and the gateway port (NET_BIND_SERVICE). Health check commands run with the same limits.
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
StateDirectory=meshfed
StateDirectoryMode=0700
ReadWritePaths=/var/lib/meshfed
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
UMask=0077
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""

CONFIG_TEXT = """\
# meshfed agent on a VM, written by `meshfed vm install` (kept on later installs).
# Edit, then: systemctl restart meshfed-agent. Reference: docs/install-vm.md.
site:
  name: @SITE@
  network: @NETWORK@
  region: "@REGION@"
  zone: "@ZONE@"
  kind: vm
  # gateway_address: 203.0.113.10   # where other networks reach this VM's gateway; default: vm.address
registry:
  # etcd of the mesh; empty starts an embedded etcd (a one-machine mesh).
  endpoints: [@ENDPOINTS@]
  # tls: {ca: /etc/meshfed/etcd/ca.crt, cert: /etc/meshfed/etcd/client.crt, key: /etc/meshfed/etcd/client.key}
state_dir: /var/lib/meshfed
gateway:
  ca_dir: /etc/meshfed/site
dns:
  zone: @DNSZONE@
  udp: ["127.0.0.1:53"]
  tcp: ["127.0.0.1:53"]
@DNSREST@vm:
  address: auto
  vip_interface: meshfed0
  # auto: one egress listener for the whole VIP range (nft table inet meshfed) when nft works here,
  # else a listener per imported service port; on: refuse to start without it; off: never.
  egress_capture: auto
  services: []
  # - namespace: shop
  #   name: web
  #   ports: [{name: http, port: 8080}]
  #   check: {kind: http, path: /, interval: 5, timeout: 2, rise: 2, fall: 2}
  discovery:
    enabled: false
    types: ["_http._tcp.local."]
    namespace: lan
  announce: false
"""

RESOLVED_TEXT = """\
# Written by `meshfed vm install`: names in the mesh zone go to the meshfed agent's DNS server;
# everything else keeps going where it went before (the agent does not forward in this mode).
[Resolve]
DNS=127.0.0.1
Domains=~@DNSZONE@
"""


@dataclass(frozen=True, slots=True)
class InstallOptions:
    """What the operator asked `meshfed vm install` for."""

    site: str
    network: str
    region: str = ""
    zone: str = ""
    endpoints: tuple[str, ...] = ()
    dns: str = "resolved"
    """resolved (drop-in with a routing domain), resolvconf (agent forwards, operator edits resolv.conf), none."""
    dns_zone: str = "clusterset.local"
    upstreams: tuple[str, ...] = ()
    """Nameservers the agent forwards other names to in resolvconf mode (the ones resolv.conf had)."""


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One file to install: where (absolute, as on the VM), what, which mode, and whether an existing one is kept."""

    path: Path
    content: bytes
    mode: int
    keep_existing: bool = False


@dataclass(slots=True)
class Report:
    """What one install or uninstall did, for the CLI to print."""

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)


def render(options: InstallOptions, bundle: Mapping[str, bytes]) -> list[FileSpec]:
    """Every file an install writes; `bundle` maps site bundle file names to their bytes (may be empty)."""
    endpoints = ", ".join(f'"{e}"' for e in options.endpoints)
    if options.dns == "resolvconf":
        ups = ", ".join(f'"{u}"' for u in options.upstreams)
        dns_rest = f"  forwarding: true\n  upstreams: [{ups}]\n"
    else:
        dns_rest = "  forwarding: false\n"
    config = (CONFIG_TEXT.replace("@SITE@", options.site).replace("@NETWORK@", options.network)
              .replace("@REGION@", options.region).replace("@ZONE@", options.zone)
              .replace("@ENDPOINTS@", endpoints).replace("@DNSZONE@", options.dns_zone)
              .replace("@DNSREST@", dns_rest))  # fmt: skip
    files = [
        FileSpec(CONFIG, config.encode(), 0o640, keep_existing=True),
        FileSpec(UNIT, UNIT_TEXT.encode(), 0o644),
    ]
    for name, mode in BUNDLE_FILES.items():
        if name in bundle:
            files.append(FileSpec(SITE_DIR / name, bundle[name], mode))
    if options.dns == "resolved":
        files.append(FileSpec(RESOLVED_DROPIN, RESOLVED_TEXT.replace("@DNSZONE@", options.dns_zone).encode(), 0o644))
    return files


def nameservers(resolv_conf: str) -> tuple[str, ...]:
    """The nameservers of a resolv.conf text, loopback ones left out (they would be the agent itself)."""
    out = []
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith(("127.", "::1")):
            out.append(parts[1])
    return tuple(out)


def install(root: Path, files: Iterable[FileSpec]) -> Report:
    """Write `files` under `root`: atomically, only when different, with their modes; keep kept ones."""
    report = Report()
    for spec in files:
        target = _under(root, spec.path)
        _mkdirs(root, spec.path.parent)
        if target.exists() and spec.keep_existing:
            report.kept.append(spec.path)
            continue
        if target.exists() and target.read_bytes() == spec.content:
            if target.stat().st_mode & 0o7777 != spec.mode:
                target.chmod(spec.mode)
            report.unchanged.append(spec.path)
            continue
        tmp = target.with_name(f".{target.name}.meshfed-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, spec.mode)
        with os.fdopen(fd, "wb") as f:
            f.write(spec.content)
        tmp.chmod(spec.mode)  # umask may have narrowed the mode given to open()
        tmp.replace(target)
        report.written.append(spec.path)
    return report


def uninstall(root: Path) -> Report:
    """Remove everything an install writes (config, site bundle, unit, DNS drop-in, venv, state)."""
    report = Report()
    for path in (UNIT, RESOLVED_DROPIN):
        target = _under(root, path)
        if target.exists() or target.is_symlink():
            target.unlink()
            report.removed.append(path)
    for path in (CONFIG_DIR, PREFIX, STATE_DIR):
        target = _under(root, path)
        if target.exists():
            shutil.rmtree(target)
            report.removed.append(path)
    for path in (RESOLVED_DROPIN.parent, UNIT.parent, *_OURS_IF_EMPTY):
        _prune(root, path)
    return report


def read_bundle(directory: Path) -> dict[str, bytes]:
    """The site bundle files found in `directory` (made by `meshfed ca site`); raises OSError if none."""
    found = {n: (directory / n).read_bytes() for n in BUNDLE_FILES if (directory / n).is_file()}
    if "site.crt" not in found or "site.key" not in found:
        raise FileNotFoundError(f"{directory} holds no site.crt and site.key (made by `meshfed ca site`)")
    return found


# ---------------------------------------------------------------- private

_OURS_IF_EMPTY = (Path("/etc/systemd"), Path("/etc"), Path("/opt"), Path("/var/lib"), Path("/var"))
"""Parents removed when an uninstall leaves them empty (only ever the case in a scratch root)."""


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _mkdirs(root: Path, path: Path) -> None:
    mode = 0o700 if path == SITE_DIR else 0o755
    _under(root, path).mkdir(parents=True, exist_ok=True, mode=mode)
    if path == SITE_DIR:
        _under(root, path).chmod(0o700)


def _prune(root: Path, path: Path) -> None:
    target = _under(root, path)
    if target.is_dir() and root.resolve() != target.resolve() and not any(target.iterdir()):
        target.rmdir()
