"""Code conventions that a linter does not check for us."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_no_asyncio_wait_for_in_product_code() -> None:
    # On Python 3.11 asyncio.wait_for can swallow the cancellation that stops the agent when it lands
    # as the awaited thing completes (CPython gh-86296): an agent then ignores SIGTERM. Use asyncio.timeout.
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for pkg in ("federation", "gateway")
        for path in sorted((ROOT / pkg).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "asyncio.wait_for(" in line
    ]
    assert not offenders, f"use asyncio.timeout instead of asyncio.wait_for: {offenders}"


def test_only_the_registry_adapter_imports_the_etcd_client() -> None:
    importers = [
        str(path.relative_to(ROOT))
        for pkg in ("federation", "gateway")
        for path in sorted((ROOT / pkg).rglob("*.py"))
        if any(line.startswith(("import aetcd", "from aetcd")) for line in path.read_text().splitlines())
    ]
    assert importers == ["federation/registry/etcd.py"]


def test_federation_imports_gateway_only_at_the_composition_root() -> None:
    importers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "federation").rglob("*.py"))
        if any(line.lstrip().startswith(("import gateway", "from gateway")) for line in path.read_text().splitlines())
    ]
    assert importers == ["federation/agent/dataplane.py"]
