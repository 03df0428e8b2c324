"""Code conventions that a linter does not check for us, read from the syntax tree of every module."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).parents[2]
PRODUCT = ("federation", "gateway")


def modules() -> Iterator[Path]:
    for pkg in PRODUCT:
        yield from sorted((ROOT / pkg).rglob("*.py"))


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_by(module: ast.Module, package: str) -> set[str]:
    """Every module `module` (of `package`) imports, wherever the statement is (a function body, a try, an
    if), relative imports resolved, plus modules named to importlib.import_module / __import__ as a literal."""
    out: set[str] = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "__import__")):
            out.add(node.args[0].value)
    return out


def importers_of(top: str, packages: tuple[str, ...] = PRODUCT) -> list[str]:
    """Product modules (in `packages`) that import `top` or anything below it."""
    out = []
    for path in modules():
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in packages:
            continue
        names = imported_by(tree(path), ".".join(rel.with_suffix("").parts[:-1]))
        if any(name == top or name.startswith(top + ".") for name in names):
            out.append(str(rel))
    return out


def test_no_asyncio_wait_for_in_product_code() -> None:
    # On Python 3.11 asyncio.wait_for can swallow the cancellation that stops the agent when it lands
    # as the awaited thing completes (CPython gh-86296): an agent then ignores SIGTERM. Use asyncio.timeout.
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in modules()
        for node in ast.walk(tree(path))
        if (isinstance(node, ast.Attribute) and node.attr == "wait_for"
            and isinstance(node.value, ast.Name) and node.value.id == "asyncio")
        or (isinstance(node, ast.ImportFrom) and node.module == "asyncio"
            and any(alias.name == "wait_for" for alias in node.names))
    ]
    assert not offenders, f"use asyncio.timeout instead of asyncio.wait_for: {offenders}"


def test_only_the_registry_adapter_imports_the_etcd_client() -> None:
    assert importers_of("aetcd") == ["federation/registry/etcd.py"]
    assert importers_of("grpc") == ["federation/registry/etcd.py"]


def test_federation_imports_gateway_only_at_the_composition_root() -> None:
    assert importers_of("gateway", ("federation",)) == ["federation/agent/dataplane.py"]


def test_the_rules_see_imports_inside_functions_relative_ones_and_by_name() -> None:
    hidden = ast.parse(
        "def later():\n    import aetcd.client\n"
        "class K:\n    def m(self):\n        from ..registry import etcd\n"
        "def by_name():\n    importlib.import_module('gateway.eastwest')\n    __import__('grpc')\n"
    )
    found = imported_by(hidden, "federation.core")
    assert {"aetcd.client", "federation.registry", "federation.registry.etcd", "gateway.eastwest", "grpc"} <= found
