"""`meshfed vm install` and `meshfed vm uninstall`: put meshfed on a VM as a systemd service, or take it off."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import federation
from federation.core.errors import ConfigError
from federation.core.records import is_dns_label
from federation.pki.joining import JoinRefused
from federation.sources.vm.installing import (
    CONFIG,
    DNS_MODES,
    PREFIX,
    RESOLVED_DROPIN,
    SITE_DIR,
    UNIT,
    InstallOptions,
    install,
    nameservers,
    read_bundle,
    render,
    uninstall,
)

UNIT_NAME = UNIT.name


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `vm install` and `vm uninstall` to the `meshfed` parser."""
    vm = sub.add_parser("vm", help="run meshfed on a plain VM: install or remove the agent service")
    vm_sub = vm.add_subparsers(dest="vm_command", metavar="SUBCOMMAND", required=True)

    ins = vm_sub.add_parser("install", help="venv, config, systemd unit, site bundle and DNS routing (idempotent)")
    ins.add_argument("--site", help="this VM's site name (a DNS label); with --join, the token's")
    ins.add_argument("--network", required=True, help="the network the VM is on (a DNS label)")
    ins.add_argument("--region", default="", help="locality region (optional)")
    ins.add_argument("--zone", default="", help="locality zone (optional)")
    ins.add_argument("--registry", action="append", default=[], metavar="HOST:PORT",
                     help="etcd endpoint of the mesh (repeat for several); none runs an embedded etcd")
    ins.add_argument("--bundle", type=Path, help="directory made by `meshfed ca site NAME` for this site")
    ins.add_argument("--join", metavar="TOKEN", help="join with a one-time token from `meshfed join-token create`: "
                     "the site key is made here and never leaves this VM")
    ins.add_argument("--dns", choices=("auto", *DNS_MODES), default="auto",
                     help="resolved: systemd-resolved drop-in; resolvconf: print resolv.conf steps; auto: detect")
    ins.add_argument("--dns-zone", default="clusterset.local", help="the mesh DNS zone (default clusterset.local)")
    ins.add_argument("--root", type=Path, default=Path("/"), help="install into this root directory (tests, images)")
    ins.add_argument("--no-venv", action="store_true", help="do not create /opt/meshfed (already done, or tests)")
    ins.add_argument("--package", default="", help="what pip installs into the venv (default: this meshfed)")
    ins.add_argument("--no-start", action="store_true", help="do not enable and start the service")
    ins.set_defaults(handler=run_install)

    rm = vm_sub.add_parser("uninstall", help="stop the agent, remove its files, VIP interface and DNS routing")
    rm.add_argument("--root", type=Path, default=Path("/"), help="uninstall from this root directory")
    rm.set_defaults(handler=run_uninstall)


def run_install(args: argparse.Namespace) -> int:
    """Install; exit 1 with a one-line reason on failure."""
    root: Path = args.root
    live = root.resolve() == Path("/")
    try:
        if args.join and args.bundle:
            raise ConfigError("give --join or --bundle, not both")
        if args.join:
            args.site, bundle = _join(root, args.join, args.site)
        elif args.site is None:
            raise ConfigError("--site is required (or --join with a token, which names the site)")
        for flag, value in (("--site", args.site), ("--network", args.network)):
            if not is_dns_label(value):
                raise ConfigError(f"{flag} {value!r} is not a DNS label (a-z, 0-9, '-', at most 63 chars)")
        if not args.join:
            bundle = read_bundle(args.bundle) if args.bundle else {}
        mode = args.dns if args.dns != "auto" else _detect_dns(root)
        upstreams: tuple[str, ...] = ()
        if mode == "resolvconf":
            resolv = root / "etc/resolv.conf"
            upstreams = nameservers(resolv.read_text()) if resolv.is_file() else ()
        options = InstallOptions(site=args.site, network=args.network, region=args.region, zone=args.zone,
                                 endpoints=tuple(args.registry), dns=mode, dns_zone=args.dns_zone.strip("."),
                                 upstreams=upstreams)
        if not args.no_venv:
            _venv(root, args.package or _default_package())
        report = install(root, render(options, bundle))
    except (ConfigError, JoinRefused, OSError, subprocess.CalledProcessError) as exc:
        print(f"meshfed vm install: {exc}", file=sys.stderr)
        return 1
    for path in report.written:
        print(f"wrote {path}")
    for path in report.unchanged:
        print(f"unchanged {path}")
    for path in report.kept:
        print(f"kept {path} (edit it by hand; delete it to have it written again)")
    if not bundle:
        print("no --bundle given: copy the output of `meshfed ca site` to /etc/meshfed/site before the gateway runs")
    _dns_guidance(mode, options)
    if live and not args.no_start and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        subprocess.run(["systemctl", "enable", "--now", UNIT_NAME], check=False)
        if RESOLVED_DROPIN in report.written:
            subprocess.run(["systemctl", "try-reload-or-restart", "systemd-resolved"], check=False)
        print(f"started {UNIT_NAME}; see: systemctl status {UNIT_NAME}; meshfed status")
    elif not live:
        print(f"installed into {root}; on the VM run: systemctl daemon-reload && systemctl enable --now {UNIT_NAME}")
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    """Uninstall; exit 1 with a one-line reason on failure."""
    root: Path = args.root
    live = root.resolve() == Path("/")
    interface = _vip_interface(root)
    if live and shutil.which("systemctl"):
        subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], check=False, capture_output=True)
    try:
        report = uninstall(root)
    except OSError as exc:
        print(f"meshfed vm uninstall: {exc}", file=sys.stderr)
        return 1
    if live:
        from federation.sources.vm.netlink import VipInterface
        from federation.sources.vm.settings import VmSettings

        try:
            if asyncio.run(VipInterface(VmSettings(vip_interface=interface)).remove()):
                print(f"removed interface {interface}")
        except OSError as exc:  # NetlinkError is an OSError: no permission, or no netlink at all
            print(f"meshfed vm uninstall: could not remove interface {interface}: {exc}", file=sys.stderr)
        from federation.sources.vm.nftables import CaptureUnavailable, NftCapture

        rules = NftCapture(())
        try:  # a stopped agent removed its capture rules; a killed one left them
            if asyncio.run(rules.remove()):
                print(f"removed nft table {rules.name}")
        except CaptureUnavailable:
            pass  # no nft (so no rules of ours), or no permission (then nothing else was removable either)
        if shutil.which("systemctl"):
            subprocess.run(["systemctl", "daemon-reload"], check=False)
            if RESOLVED_DROPIN in report.removed:
                subprocess.run(["systemctl", "try-reload-or-restart", "systemd-resolved"], check=False)
    for path in report.removed:
        print(f"removed {path}")
    if not report.removed:
        print("nothing to remove")
    return 0


# ---------------------------------------------------------------- private


def _join(root: Path, token: str, site: str | None) -> tuple[str, dict[str, bytes]]:
    """The site and its bundle: the identity already here (a rerun, a reboot), else a fresh join."""
    from federation.cli.join import join, joined_site
    from federation.pki.joining import decode_token

    name = decode_token(token).site
    if site is not None and site != name:
        raise JoinRefused(f"the token is for site {name}, not {site}")
    if joined_site(root / SITE_DIR.relative_to("/")) == name:
        print(f"{SITE_DIR} already holds the identity of site {name}: keeping it (the token is not used)")
        return name, read_bundle(root / SITE_DIR.relative_to("/"))
    bundle = join(token)
    print(f"joined the mesh as site {name}: the site key was made here (never sent), its certificate signed")
    return name, bundle


def _detect_dns(root: Path) -> str:
    """resolved when systemd-resolved runs (or is configured) under `root`, else resolvconf."""
    if (root / "run/systemd/resolve").is_dir() or (root / "etc/systemd/resolved.conf").is_file():
        return "resolved"
    return "resolvconf"


def _dns_guidance(mode: str, options: InstallOptions) -> None:
    if mode == "resolved":
        print(f"DNS: systemd-resolved sends *.{options.dns_zone} to the agent (routing domain ~{options.dns_zone})")
    elif mode == "resolvconf":
        ups = ", ".join(options.upstreams) or "none found: set dns.upstreams in /etc/meshfed/agent.yaml"
        print("DNS: make the agent this VM's resolver: put `nameserver 127.0.0.1` first in /etc/resolv.conf "
              f"(and stop DHCP from rewriting it); the agent forwards other names to: {ups}")


def _venv(root: Path, package: str) -> None:
    venv = root / PREFIX.relative_to("/")
    if not (venv / "bin/python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"created virtualenv {PREFIX}")
    subprocess.run([str(venv / "bin/pip"), "install", "--quiet", "--disable-pip-version-check", package],
                   check=True)
    print(f"installed {package} into {PREFIX}")


def _default_package() -> str:
    """This checkout when running from source, else the same version from the package index."""
    source = Path(federation.__file__).resolve().parents[1]
    if (source / "pyproject.toml").is_file():
        return str(source)
    return f"meshfed=={federation.__version__}"


def _vip_interface(root: Path) -> str:
    """The VIP interface named in the installed config, else the default."""
    try:
        data = yaml.safe_load((root / CONFIG.relative_to("/")).read_text()) or {}
        name = data.get("vm", {}).get("vip_interface", "meshfed0")
        return name if isinstance(name, str) and name else "meshfed0"
    except (OSError, yaml.YAMLError, AttributeError):
        return "meshfed0"
