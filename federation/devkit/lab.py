"""A multi-network lab on one machine: network namespaces joined by bridges (for the demo and e2e tests).

    root ns 198.19.0.254 (etcd) --+
                                  wan bridge (198.19.0.0/24): only the sites' wan sides
    <prefix>-east  wan 198.19.0.11 -+-  lan 198.18.1.11 --+  net-1 bridge (198.18.1.0/24)
    <prefix>-edge  wan 198.19.0.13 -+-  lan 198.18.1.13 --+
    <prefix>-west  wan 198.19.0.12 -+-  lan 198.18.2.12 --   net-2 bridge (198.18.2.0/24)

No namespace forwards packets, so a site reaches another network only through the gateways on the
wan. Addresses are from 198.18.0.0/15 (RFC 2544 benchmarking range). Everything created carries the
prefix, so `down()` finds and removes it all, also after a crash.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

WAN_ROOT = "198.19.0.254"
"""The host's own address on the default wan (198.19.0.0/24), where the lab's etcd listens."""


@dataclass(frozen=True, slots=True)
class LabSite:
    """One site of the lab: its namespace and addresses."""

    name: str
    network: str
    wan_ip: str
    lan_ip: str
    zone: str

    def ns(self, prefix: str) -> str:
        return f"{prefix}-{self.name}"


DEFAULT_SITES = (
    LabSite("east", "net-1", "198.19.0.11", "198.18.1.11", "zone-a"),
    LabSite("west", "net-2", "198.19.0.12", "198.18.2.12", "zone-a"),
    LabSite("edge", "net-1", "198.19.0.13", "198.18.1.13", "zone-b"),
)


class Lab:
    """Builds and removes the namespaces, bridges and veths; runs processes inside namespaces."""

    def __init__(self, prefix: str, state_dir: Path, sites: Sequence[LabSite] = DEFAULT_SITES,
                 wan: int | None = 0) -> None:
        """`wan` is the third octet of the wan (198.19.<wan>.0/24); None picks one no host route uses yet,
        so several labs (a demo and a test run) can exist side by side."""
        if not prefix.isalnum() or len(prefix) > 6:
            raise ValueError("lab prefix must be alphanumeric, at most 6 characters (interface names are short)")
        self.prefix = prefix
        self.state_dir = state_dir
        self.wan = _free_wan() if wan is None else wan
        self.wan_root = f"198.19.{self.wan}.254"
        """The host's address on this lab's wan, where the lab's etcd listens."""
        self.sites = {s.name: _on_wan(s, self.wan) for s in sites}
        self._pids_file = state_dir / "lab.pids"
        self.children: list[subprocess.Popen[bytes]] = []
        """Processes this Lab object started (reaped by `kill_all`); other runs are found by the pids file."""

    @staticmethod
    def available() -> str | None:
        """None if this process can build a lab, else why not."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "the `ip` command (iproute2) is missing"
        return None

    def ns(self, site: str) -> str:
        return self.sites[site].ns(self.prefix)

    def up(self) -> None:
        """Create everything (removing leftovers of an earlier run with the same prefix first)."""
        self.down()
        p = self.prefix
        self.state_dir.mkdir(parents=True, exist_ok=True)
        networks = sorted({s.network for s in self.sites.values()})
        _ip("netns", "add", f"{p}-wan")
        _nsip(f"{p}-wan", "link", "add", "name", "br0", "type", "bridge")
        _nsip(f"{p}-wan", "link", "set", "br0", "up")
        for net in networks:
            _ip("netns", "add", f"{p}-{net}")
            _nsip(f"{p}-{net}", "link", "add", "name", "br0", "type", "bridge")
            _nsip(f"{p}-{net}", "link", "set", "br0", "up")
        # The host joins the wan, so it can run etcd and reach the agents' admin endpoints there.
        _ip("link", "add", f"{p}h", "type", "veth", "peer", "name", "host", "netns", f"{p}-wan")
        _ip("addr", "add", f"{self.wan_root}/24", "dev", f"{p}h")
        _ip("link", "set", f"{p}h", "up")
        _nsip(f"{p}-wan", "link", "set", "host", "master", "br0", "up")
        for site in self.sites.values():
            ns = site.ns(p)
            _ip("netns", "add", ns)
            _nsip(ns, "link", "set", "lo", "up")
            for side, bridge_ns, addr in (("w", f"{p}-wan", site.wan_ip), ("l", f"{p}-{site.network}", site.lan_ip)):
                peer, here = f"{site.name[:8]}{side}", f"{p}{side}{site.name[:6]}"
                _ip("link", "add", here, "type", "veth", "peer", "name", peer, "netns", bridge_ns)
                _ip("link", "set", here, "netns", ns)
                _nsip(ns, "link", "set", here, "name", "wan" if side == "w" else "lan")
                _nsip(ns, "addr", "add", f"{addr}/24", "dev", "wan" if side == "w" else "lan")
                _nsip(ns, "link", "set", "wan" if side == "w" else "lan", "up")
                _nsip(bridge_ns, "link", "set", peer, "master", "br0", "up")
            # `ip netns exec` shows this file as /etc/resolv.conf: the site's agent is its resolver.
            resolv = Path("/etc/netns") / ns
            resolv.mkdir(parents=True, exist_ok=True)
            (resolv / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")

    def down(self) -> None:
        """Kill the lab's processes and remove every namespace, link and file it made (idempotent)."""
        self.kill_all()
        p = self.prefix
        for ns in namespaces():
            if ns.startswith(f"{p}-"):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
                shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        subprocess.run(["ip", "link", "del", f"{p}h"], capture_output=True, check=False)

    def popen(self, site: str | None, argv: Sequence[str], log: Path | None = None,
              env: dict[str, str] | None = None, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        """Start `argv` in the site's namespace (None: the host), remembered for `kill_all`."""
        cmd = ["ip", "netns", "exec", self.ns(site), *argv] if site else list(argv)
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
        try:
            with _stop_signals_held():  # the demo's Ctrl-C waits until the child is recorded for teardown
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=stdin,
                                        env=env, start_new_session=True)
                self.children.append(proc)
                self.state_dir.mkdir(parents=True, exist_ok=True)
                with open(self._pids_file, "a") as f:
                    f.write(f"{proc.pid}\n")
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        return proc

    def run(self, site: str, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the site's namespace and wait for it."""
        return subprocess.run(["ip", "netns", "exec", self.ns(site), *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def kill_all(self) -> None:
        """SIGTERM, then SIGKILL, every process group this lab started (by the PIDs it recorded)."""
        try:
            pids = [int(x) for x in self._pids_file.read_text().split()]
        except (OSError, ValueError):
            pids = []
        pids += [c.pid for c in self.children if c.pid not in pids]
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            alive = [pid for pid in pids if _signal_group(pid, sig)]
            deadline = time.monotonic() + wait
            while alive and time.monotonic() < deadline:
                alive = [pid for pid in alive if running(pid)]
                time.sleep(0.05)
            if not alive:
                break
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(1)
        self.children.clear()
        self._pids_file.unlink(missing_ok=True)


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP (Python-level handlers only) and deliver the first one afterwards.

    Not the signal mask: children inherit it, and an agent started with SIGTERM blocked would not stop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    # Not set from Python (None) or ignored (which children inherit, e.g. SIGHUP under nohup): left alone.
    held = {sig: h for sig in _STOP_SIGNALS if (h := signal.getsignal(sig)) not in (None, signal.SIG_IGN)}
    for sig in held:
        signal.signal(sig, lambda signum, _frame: got.append(signum))
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        if got:
            signal.raise_signal(got[0])


def _on_wan(site: LabSite, wan: int) -> LabSite:
    host = site.wan_ip.rsplit(".", 1)[1]
    return LabSite(site.name, site.network, f"198.19.{wan}.{host}", site.lan_ip, site.zone)


def _free_wan() -> int:
    used = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, check=False).stdout
    for wan in range(1, 250):
        if f"198.19.{wan}.0/24" not in used:
            return wan
    raise RuntimeError("no free 198.19.x.0/24 for another lab")


def namespaces() -> list[str]:
    """Every network namespace on the host (`ip netns list`)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


def _nsip(ns: str, *args: str) -> None:
    _ip("-n", ns, *args)


def _signal_group(pid: int, sig: int) -> bool:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # each child leads its own session: this reaches what it started too
        return True
    return False


def running(pid: int) -> bool:
    """True while `pid` runs: a child of ours that exited is reaped here, anyone's zombie counts as gone.

    `meshfed demo --down` kills processes of another (perhaps dead) demo process, so they are not
    always our children; waiting on them must not end while they are still shutting down.
    """
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone, unless there is no /proc to ask
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] != "Z"
