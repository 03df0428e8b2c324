"""Accuracy of a label split through a gateway: 80/20 by `version` to one site on another network, over
real tunnels on loopback (tests/integration/policylab.py), with the subset in the stream request and, as the
reference in the same run, with that site's gateway refusing the extension as gateways before it did (it
then picks any of its endpoints, as every gateway did before subsets).

    .venv/bin/python -m tests.bench.subsets [--connections 2000] [--parallel 32]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import time
from pathlib import Path

from federation.core.errors import RemoteProtocolError
from gateway import preamble
from tests.integration.policylab import NamedServer, lab, many
from tests.integration.test_traffic_enforced import EU1

SPLIT = "split: [{weight: 80, labels: {version: v1}}, {weight: 20, labels: {version: v2}}]"


def _strict(body: preamble._Reader) -> dict[int, bytes]:
    if body.left():
        raise RemoteProtocolError(f"preamble has {body.left()} bytes after its last field", cause="trailing-bytes")
    return {}


async def run(old: bool, n: int, parallel: int) -> str:
    real = preamble._decode_extensions
    if old:
        preamble._decode_extensions = _strict
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with lab(Path(tmp)) as it:
                await it.add("east", [NamedServer("v1-a", {"version": "v1"}), NamedServer("v1-b", {"version": "v1"}),
                                      NamedServer("v2", {"version": "v2"})], EU1)
                await it.start_egress(EU1)
                it.set_policy(SPLIT)
                t0 = time.perf_counter()
                got = collections.Counter(await many(it.address, n, parallel=parallel))
                dt = time.perf_counter() - t0
    finally:
        preamble._decode_extensions = real
    v2 = got["v2"] / n
    return (f"{'old gateway (reference)' if old else 'subset in the request':24} v2 {v2:6.1%} (goal 20.0 % +/- 2), "
            f"off by {abs(v2 - 0.2):5.1%}; v1-a {got['v1-a']}, v1-b {got['v1-b']}, failed {got['']}, "
            f"{n / dt:.0f} connections/s")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--parallel", type=int, default=32)
    args = ap.parse_args()
    for old in (False, True):
        print(await run(old, args.connections, args.parallel), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
