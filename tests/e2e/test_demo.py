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
