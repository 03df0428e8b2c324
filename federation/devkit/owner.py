"""The process that runs a demo, recorded in its state directory, and what a demo leaves behind.

A running demo writes `demo.json` (its pid and start time, the lab prefix, the mode) so that
`meshfed demo --down` from another shell can stop that process, and only that one: the start time
tells it from a process that got the same pid later. The demo process tears its own stage down when
signalled; `leftovers` then says what, if anything, is really still there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from federation.devkit.lab import namespaces, running

RECORD = "demo.json"


@dataclass(frozen=True, slots=True)
class Owner:
    """The process running a demo."""

    pid: int
    started: str
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); "" where there is no /proc."""
    prefix: str
    netns: bool

    def alive(self) -> bool:
        """True while that very process runs (not a zombie, not a later process with the same pid)."""
        return running(self.pid) and _started(self.pid) == self.started

    def stop(self, timeout: float = 60.0) -> bool:
        """SIGTERM the process (it tears its demo down), wait up to `timeout`, then SIGKILL; True if it stopped
        by itself."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if not self.alive():
                return True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not self.alive():
                return sig == signal.SIGTERM
        return False


def record(state: Path, prefix: str, netns: bool) -> Owner:
    """Write this process as the owner of the demo in `state`."""
    owner = Owner(os.getpid(), _started(os.getpid()), prefix, netns)
    (state / RECORD).write_text(json.dumps(asdict(owner)) + "\n")
    return owner


def read(state: Path) -> Owner | None:
    """The owner recorded in `state`, or None (no demo there, or an unreadable record)."""
    try:
        raw = json.loads((state / RECORD).read_text())
        return Owner(int(raw["pid"]), str(raw["started"]), str(raw["prefix"]), bool(raw["netns"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_pids(state: Path) -> list[int]:
    """The pids the lab recorded in `state` (its children: agents, samples, etcd, API stand-ins)."""
    try:
        return [int(x) for x in (state / "lab.pids").read_text().split()]
    except (OSError, ValueError):
        return []


def leftovers(state: Path, prefix: str, netns: bool, pids: list[int]) -> list[str]:
    """What is still there of a demo: namespaces, resolver files, the host link, live processes, the state."""
    left: list[str] = []
    if netns:
        left += [f"namespace {ns}" for ns in namespaces() if ns.startswith(f"{prefix}-")]
        left += [str(p) for p in sorted(Path("/etc/netns").glob(f"{prefix}-*"))]
        link = subprocess.run(["ip", "link", "show", f"{prefix}h"], capture_output=True, check=False)
        if link.returncode == 0:
            left.append(f"host link {prefix}h")
    left += [f"process {pid}" for pid in pids if running(pid)]
    if state.exists():
        left.append(f"state directory {state}")
    return left


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses


def _started(pid: int) -> str:
    fields = _stat(pid)
    return fields[19] if fields is not None else ""
