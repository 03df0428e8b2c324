"""The policy cores stay pure: no IO, no clock, no logging, no third-party import (STYLE.md section 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[4]
ALLOWED = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "math", "random", "re", "json",
           "types", "typing", "federation.core", "gateway.policy", "gateway.balancing"}


@pytest.mark.parametrize("path", sorted([*(ROOT / "gateway" / "policy").glob("*.py"),
                                         *(ROOT / "federation" / "core" / "policy").glob("*.py")]),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_a_policy_core_imports_nothing_that_does_io_or_reads_the_clock(path: Path) -> None:
    tree = ast.parse(path.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    bad = [m for m in names if not any(m == ok or m.startswith(ok + ".") for ok in ALLOWED)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    assert len(path.read_text().splitlines()) <= 400
