"""`meshfed demo` as a newcomer runs it: the loopback variant (what a user without root gets)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_on_loopback_runs_every_step_and_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-m", "federation", "demo", "--loopback", "--state-dir", str(state)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "LOOPBACK MODE (asked for with --loopback)" in text
    for step in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5.", "== demo done"):
        assert step in text
    assert "web served by east" in text
    assert "api served by east" in text
    assert "-> east via direct" in text
    assert "web served by edge" in text  # the failover
    assert not state.exists()  # torn down: the state directory is gone too


def test_loopback_demo_leaves_namespaces_of_others_alone(tmp_path: Path) -> None:
    """A loopback demo made no namespaces; tearing it down must not remove a real demo's beside it."""
    import os

    from federation.devkit.stage import PREFIX

    if os.geteuid() != 0:
        import pytest

        pytest.skip("making a namespace needs root")
    name = f"{PREFIX}-bystander"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        out = subprocess.run([sys.executable, "-m", "federation", "demo", "--loopback", "--state-dir",
                              str(tmp_path / "demo")], capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout + out.stderr
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert name in listed
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
