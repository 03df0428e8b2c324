"""The demo's owner record and the lab's process checks: what `meshfed demo --down` relies on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation.devkit import owner
from federation.devkit.lab import _stop_signals_held, running


def test_a_record_names_this_process_and_only_this_one(tmp_path: Path) -> None:
    me = owner.record(tmp_path, "mfx", netns=True)
    assert owner.read(tmp_path) == me
    assert me.pid == os.getpid()
    assert me.alive()
    reused = owner.Owner(me.pid, str(int(me.started) + 1), "mfx", True)  # same pid, another start time
    assert not reused.alive()


@pytest.mark.parametrize("text", ["", "{", '{"pid": "x"}', '{"pid": 1}', "[]"])
def test_an_unreadable_record_is_no_owner(tmp_path: Path, text: str) -> None:
    (tmp_path / owner.RECORD).write_text(text)
    assert owner.read(tmp_path) is None
    assert owner.read(tmp_path / "missing") is None


def test_stop_ends_the_process_and_a_zombie_is_not_running() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        who = owner.Owner(child.pid, owner._started(child.pid), "mfx", False)
        assert who.alive()
        assert running(child.pid)
        assert who.stop(timeout=10)  # SIGTERM was enough
        assert not who.alive()
        assert not running(child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_process_that_ignores_sigterm_is_killed() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); print(flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    assert child.stdout is not None
    with child, child.stdout:
        child.stdout.readline()  # SIGTERM is ignored from here on
        who = owner.Owner(child.pid, owner._started(child.pid), "mfx", False)
        assert not who.stop(timeout=0.5)
        assert not running(child.pid)
        child.kill()


def test_a_process_that_is_not_our_child_runs_until_it_exits() -> None:
    """What --down waits on: the agents of a demo process that died are nobody's children here."""
    out = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                         check=True, timeout=10)
    orphan = int(out.stdout)
    try:
        assert running(orphan)
        assert running(orphan)  # asking twice changes nothing (no reaping of what is not ours)
    finally:
        os.kill(orphan, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while running(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(orphan)


def test_leftovers_lists_live_processes_and_the_state(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert owner.leftovers(tmp_path, "mfx", False, [child.pid]) == [f"process {child.pid}",
                                                                         f"state directory {tmp_path}"]
    finally:
        child.kill()
        child.wait()
    assert owner.leftovers(tmp_path / "gone", "mfx", False, [child.pid]) == []


def test_a_stop_signal_during_a_launch_waits_until_the_child_is_recorded() -> None:
    got: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    def launch() -> None:
        with _stop_signals_held():
            signal.raise_signal(signal.SIGTERM)
            assert got == []  # held: nothing interrupts the launch

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            launch()
        assert got == [signal.SIGTERM]  # delivered right after
        assert signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGTERM, previous)
