"""`meshfed demo` as a newcomer runs it: the loopback variant (what a user without root gets), and\nhow a demo left running with --keep is stopped (Ctrl-C, SIGTERM, --down), in both modes."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_demo_on_loopback_runs_every_step_and_leaves_nothing(tmp_path: Path) -> None:
    """Every step on loopback, torn down after; a loopback demo made no namespaces, so tearing it down leaves
    a real demo's namespace beside it alone (a bystander namespace with the demo's prefix, as root)."""
    from federation.devkit.stage import PREFIX

    state = tmp_path / "demo"
    bystander = f"{PREFIX}-bystander" if os.geteuid() == 0 else None
    if bystander is not None:
        subprocess.run(["ip", "netns", "add", bystander], check=True)
    try:
        out = subprocess.run([sys.executable, "-m", "federation", "demo", "--loopback", "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=240)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    finally:
        if bystander is not None:
            subprocess.run(["ip", "netns", "del", bystander], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    if bystander is not None:
        assert bystander in listed
    text = out.stdout
    assert "LOOPBACK MODE (asked for with --loopback)" in text
    for step in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5.", "== demo done"):
        assert step in text
    # no VIP interface on loopback: the VM sites' DNS answers no VIP nothing here serves (issue 14)
    assert text.count("loopback mode: no VIP interface here, so DNS answers no address") == 2
    assert "web served by east" in text
    assert "api served by east" in text
    assert "-> east via direct" in text
    assert "web served by edge" in text  # the failover
    if shutil.which("kubectl"):  # step 6: the Kubernetes site through the real kubectl
        assert f"$ kubectl --kubeconfig {state}/east-kubeconfig get serviceimports -n shop" in text
        assert "NAME   VALID   READY   CONFLICT" in text
        assert "kind: ServiceImport" in text
        assert "- cluster: west" in text  # shop/cart, imported into east from west
    assert not state.exists()  # torn down: the state directory is gone too


# -- stopping a demo left running (`--keep`): Ctrl-C, SIGTERM, `--down` from another shell


class KeptDemo:
    """`meshfed demo --keep` in a process of its own, as a newcomer starts it in a terminal."""

    def __init__(self, state: Path, netns: bool) -> None:
        self.state = state
        self.netns = netns
        self.prefix = f"mfk{os.getpid() % 1000}"  # not the default: a real demo may run beside the tests
        argv = [sys.executable, "-m", "federation", "demo", "--keep", "--state-dir", str(state)]
        argv += ["--prefix", self.prefix] if netns else ["--loopback"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = ""
        self.pids: list[int] = []

    def wait_for(self, text: str, timeout: float = 150.0) -> None:
        """Read its output until `text` appears (then remember every process it recorded)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while text not in self.out:
                left = deadline - time.monotonic()
                assert left > 0, f"no {text!r} after {timeout:.0f}s in:\n{self.out}"
                assert self.proc.poll() is None, f"exited {self.proc.returncode} before {text!r}:\n{self.out}"
                if sel.select(min(left, 1.0)):
                    self.out += os.read(fd, 65536).decode(errors="replace")  # unbuffered: select stays true
        self.pids = [int(x) for x in (self.state / "lab.pids").read_text().split()]
        assert len(self.pids) >= 9  # etcd, three agents, four samples, the API stand-in

    def finish(self, timeout: float = 90.0) -> int:
        assert self.proc.stdout is not None
        rest, _ = self.proc.communicate(timeout=timeout)
        self.out += rest.decode(errors="replace")
        return self.proc.returncode

    def kill(self) -> None:
        """Make sure nothing outlives the test, whatever happened: SIGKILL, then --down."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        subprocess.run([sys.executable, "-m", "federation", "demo", "--down", "--state-dir", str(self.state),
                        "--prefix", self.prefix], capture_output=True, timeout=120, check=False)

    def leftovers(self) -> list[str]:
        """Everything of this demo still on the machine, looked up independently of the demo's own code."""
        left = [f"process {pid}" for pid in self.pids if _running(pid)]
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and str(self.state) in _cmdline(proc) and _running(int(proc.name)):
                left.append(f"process {proc.name}: {_cmdline(proc)}")
        if self.netns:
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
            left += [line for line in listed.splitlines() if line.startswith(f"{self.prefix}-")]
            left += [str(p) for p in Path("/etc/netns").glob(f"{self.prefix}-*")]
            links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
            left += [f"link {self.prefix}h" for line in links.splitlines() if f" {self.prefix}h@" in line]
        if self.state.exists():
            left.append(f"state directory {self.state}")
        return left


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"




# Each signal once and each mode once (the handler is one for both signals; what there is to remove differs
# by mode): the four combinations cost a minute of the suite for no case the two pairs miss.
SIGNALS_BY_MODE = [pytest.param(True, signal.SIGINT, id="ctrl-c-netns", marks=pytest.mark.netns),
                   pytest.param(False, signal.SIGTERM, id="sigterm-loopback")]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("netns", "sig"), SIGNALS_BY_MODE)
def test_a_signal_on_a_kept_demo_removes_everything(tmp_path: Path, netns: bool, sig: int) -> None:
    demo = KeptDemo(tmp_path / "demo", netns)
    try:
        demo.wait_for("removes everything\n")
        hint = demo.out[demo.out.index("-- left running"):]
        assert f"{Path(sys.executable).parent / 'meshfed'} registry ls" in hint  # a path that works in any shell
        assert " meshfed " not in hint.replace("/meshfed ", "")
        assert demo.proc.pid == json.loads((demo.state / "demo.json").read_text())["pid"]
        demo.proc.send_signal(sig)
        assert demo.finish() == 0, demo.out  # Ctrl-C is how a kept demo is meant to end
        left = demo.leftovers()  # before kill() below cleans up on its own
    finally:
        demo.kill()
    assert f"{signal.Signals(sig).name}: tearing the demo down" in demo.out
    assert "demo torn down: no namespaces, processes or files left" in demo.out
    assert left == []


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_down_from_another_shell_stops_a_kept_demo(tmp_path: Path) -> None:
    """--down sends the SIGTERM the tests above send, then waits: one mode (the one with namespaces) is enough."""
    demo = KeptDemo(tmp_path / "demo", netns=True)
    try:
        demo.wait_for("removes everything\n")
        down = subprocess.run([sys.executable, "-m", "federation", "demo", "--down", "--state-dir", str(demo.state)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        assert f"stopping the demo running as pid {demo.proc.pid}" in down.stdout
        left = demo.leftovers()
        assert demo.finish(timeout=10) == 0, demo.out  # it had already exited: --down waited for it
    finally:
        demo.kill()
    assert "SIGTERM: tearing the demo down" in demo.out
    assert "demo torn down: no namespaces, processes or files left" in down.stdout
    assert left == []
    again = subprocess.run([sys.executable, "-m", "federation", "demo", "--down", "--state-dir", str(demo.state)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0
    assert "stopping" not in again.stdout  # nothing was running, and it does not claim otherwise


@pytest.mark.timeout(300)
def test_an_interrupted_demo_removes_everything_and_says_it_did_not_finish(tmp_path: Path) -> None:
    demo = KeptDemo(tmp_path / "demo", netns=False)
    try:
        demo.wait_for("== 2.")
        demo.proc.send_signal(signal.SIGINT)
        assert demo.finish() == 128 + signal.SIGINT
        left = demo.leftovers()
    finally:
        demo.kill()
    assert "== demo done" not in demo.out
    assert "demo torn down: no namespaces, processes or files left" in demo.out
    assert left == []


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_down_cleans_up_after_a_demo_that_was_killed(tmp_path: Path) -> None:
    """SIGKILL gives the demo no chance to clean up: --down finds what it left by its records, and says so."""
    demo = KeptDemo(tmp_path / "demo", netns=True)
    try:
        demo.wait_for("removes everything\n")
        demo.proc.kill()
        demo.proc.wait()
        assert demo.leftovers()  # namespaces, agents, etcd, samples, files: all still there
        down = subprocess.run([sys.executable, "-m", "federation", "demo", "--down", "--state-dir", str(demo.state)],
                              capture_output=True, text=True, timeout=120, check=False)
        left = demo.leftovers()  # the moment --down says it is done
    finally:
        demo.kill()
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"the demo process (pid {demo.proc.pid}) had already exited" in down.stdout
    assert "demo torn down: no namespaces, processes or files left" in down.stdout
    assert left == []
