"""The house's rules as a test: which room may import which, one adapter per third-party client, no cycles.

Every import counts: at module level, inside functions, under TYPE_CHECKING. The rooms and their
allowed imports are the table below; docs/architecture.md draws the same map.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = ("federation", "gateway")

LOWER = ("federation.core", "federation.runtime")
ROOMS: dict[str, tuple[str, ...]] = {
    "federation.core": (),
    "federation.runtime": ("federation.core",),
    "federation.pki": LOWER,
    "federation.registry": LOWER,
    "federation.dns": LOWER,
    "federation.sources.kubernetes": LOWER,
    "federation.sources.vm": LOWER,
    "gateway": (*LOWER, "federation.pki"),
    "federation.devkit": (*LOWER, "federation.pki", "federation.registry"),
    "federation.agent": (*LOWER, "federation.pki", "federation.registry", "federation.dns", "federation.sources",
                         "gateway"),
    "federation.cli": (*LOWER, "federation.pki", "federation.registry", "federation.dns", "federation.sources",
                       "federation.agent", "federation.devkit"),
    "federation": ("federation.cli",),  # the package itself: __init__ and __main__
}
"""Each room and the rooms it may import (its own modules always). Arrows only point down."""

ADAPTERS: dict[str, tuple[str, ...]] = {
    # The lease keepalive runs on a thread of its own with gRPC's blocking API (it must not wait for the loop).
    "aetcd": ("federation/registry/etcd.py", "federation/registry/leasekeeper.py"),
    "grpc": ("federation/registry/etcd.py", "federation/registry/leasekeeper.py"),
    "kubernetes_asyncio": ("federation/sources/kubernetes/client.py",),
    "pyroute2": ("federation/sources/vm/netlink.py",),
    "zeroconf": ("federation/sources/vm/mdns.py",),
    "dns.asyncquery": ("federation/dns/forwarding.py",),
    "dns.query": ("federation/cli/resolve.py",),
    "cryptography": ("federation/pki/",),
    "aiohttp": ("federation/agent/admin.py", "federation/sources/kubernetes/client.py",
                "federation/sources/vm/health.py", "federation/devkit/apiserver/"),
}
"""Third-party clients and the only modules that may import them (a path ending in / is a folder)."""

CORE_MAY_NOT = ("asyncio", "socket", "ssl", "subprocess", "os", "shutil", "selectors", "threading", "signal",
                "multiprocessing", "http", "urllib", "time", "tempfile", "logging", "concurrent")
"""The pure kernel does no IO, reads no clock and never logs (its callers do)."""

CORE_MAY_USE = ("immutables",)
"""Third-party packages the kernel may use: pure data structures (persistent maps for the catalog's views)."""

MAX_LINES = 400
OVER_THE_LIMIT: dict[str, str] = {}
"""Modules allowed over the limit for now, each with the reason; the list only shrinks."""


def modules() -> Iterator[tuple[str, Path]]:
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts), path


def imports(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """Every module `path` imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # `from federation.cli import agent` imports the module federation.cli.agent
                yield f"{base}.{alias.name}", node.lineno


def room_of(module: str) -> str:
    return max((r for r in ROOMS if module == r or module.startswith(r + ".")), key=len)


def ours(name: str, known: set[str]) -> str | None:
    """The meshfed module `name` refers to (the longest known prefix), or None for a third-party name."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


ALL = dict(modules())
KNOWN = set(ALL)


def test_every_import_points_down() -> None:
    wrong = []
    for module, path in ALL.items():
        room = room_of(module)
        for name, line in imports(path, module):
            target = ours(name, KNOWN)
            if target is None or target == module:
                continue
            other = room_of(target)
            if target == "federation":
                continue  # the package face holds only __version__ and imports nothing
            if other == room or other in ROOMS[room] or any(other.startswith(r + ".") for r in ROOMS[room]):
                continue
            wrong.append(f"{path.relative_to(ROOT)}:{line} ({room}) imports {target} ({other})")
    assert not wrong, "imports against the layering (tests/unit/test_layering.py ROOMS):\n" + "\n".join(wrong)


@pytest.mark.parametrize("client", sorted(ADAPTERS))
def test_each_third_party_client_has_its_adapters_only(client: str) -> None:
    allowed = ADAPTERS[client]
    importers = sorted({
        str(path.relative_to(ROOT))
        for module, path in ALL.items()
        for name, _ in imports(path, module)
        if (name == client or name.startswith(client + ".")) and ours(name, KNOWN) is None
    })
    stray = [p for p in importers if not any(p == a or (a.endswith("/") and p.startswith(a)) for a in allowed)]
    assert not stray, f"{client} may be imported only by {allowed}, also imported by {stray}"


COMMANDS: dict[str, str] = {"nft": "federation/sources/vm/nftables.py"}
"""System commands that stand for a third-party client (netfilter) and the one module that runs them."""


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_system_command_has_its_adapter_only(command: str) -> None:
    users = sorted({
        str(path.relative_to(ROOT))
        for _, path in ALL.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value == command
    })
    assert users == [COMMANDS[command]], f"{command!r} appears in {users}; only {COMMANDS[command]} may run it"


def test_the_kernel_is_pure() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for module, path in ALL.items() if room_of(module) == "federation.core"
        for name, line in imports(path, module)
        if ours(name, KNOWN) is None and (name.split(".")[0] in CORE_MAY_NOT
                                          or not (_stdlib(name) or name.split(".")[0] in CORE_MAY_USE))
    ]
    assert not wrong, "federation.core does no IO and imports no third-party package:\n" + "\n".join(wrong)


def test_runtime_imports_only_the_kernel_and_the_standard_library() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for module, path in ALL.items() if room_of(module) == "federation.runtime"
        for name, line in imports(path, module)
        if ours(name, KNOWN) is None and not _stdlib(name)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = {m: {t for n, _ in imports(p, m) if (t := ours(n, KNOWN)) not in (None, m)} for m, p in ALL.items()}
    # A package's __init__ is imported by every import of its modules; count only real module edges.
    graph = {m: {t for t in ts if not _is_parent(t, m)} for m, ts in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append([*stack[stack.index(t):], t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_dynamic_imports_in_product_code() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for _, path in ALL.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Name) and node.id == "__import__")
        or (isinstance(node, ast.Attribute) and node.attr == "import_module")
    ]
    assert not found, f"imports the graph cannot see: {found}"


def test_no_module_is_over_the_size_limit() -> None:
    big = [f"{path.relative_to(ROOT)} ({n} lines)" for _, path in ALL.items()
           if (n := len(path.read_text().splitlines())) > MAX_LINES
           and str(path.relative_to(ROOT)) not in OVER_THE_LIMIT]
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_every_folder_says_what_lives_there() -> None:
    missing = [str(p.relative_to(ROOT)) for m, p in ALL.items() if p.name == "__init__.py"
               and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"package without a docstring: {missing}"


def test_unit_tests_mirror_the_packages() -> None:
    unit = ROOT / "tests" / "unit"
    stray = []
    for path in sorted(unit.rglob("test_*.py")):
        folder = path.parent.relative_to(unit)
        if folder == Path(".") and path.name == "test_layering.py":
            continue
        if folder.parts and folder.parts[0] == "deploy":
            continue  # tests of the manifests under deploy/
        candidates = [ROOT / "federation" / folder, ROOT / folder]
        if not any((c / "__init__.py").is_file() for c in candidates):
            stray.append(str(path.relative_to(ROOT)))
    assert not stray, f"unit tests outside a folder that mirrors a package: {stray}"


def test_no_asyncio_wait_for_in_product_code() -> None:
    # On Python 3.11 asyncio.wait_for can swallow the cancellation that stops the agent when it lands
    # as the awaited thing completes (CPython gh-86296): an agent then ignores SIGTERM. Use asyncio.timeout.
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for _, path in ALL.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "wait_for"
        and isinstance(node.value, ast.Name) and node.value.id == "asyncio"
    ]
    assert not offenders, f"use asyncio.timeout instead of asyncio.wait_for: {offenders}"


def _is_parent(target: str, module: str) -> bool:
    return module.startswith(target + ".")


def _stdlib(name: str) -> bool:
    import sys

    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"
