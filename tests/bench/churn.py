"""Agent responsiveness under registry churn: DNS latency and tunnel RTT while many sites keep changing endpoints.

One real agent (a VM site with its gateway and egress on, DNS on a loopback port) mirrors --sites
simulated sites (the scale benchmark's mesh: each site 100 exports of 10 endpoints, 50 x sites services,
every site's gateway answering TLS as that site). Then the scale loader changes endpoints at --rate
changes/s for --seconds, each change its own transaction by a random site under that site's lease: many
sites writing, as in a real mesh, not one publisher batching. The reference is the same agent idle, in
the same run: DNS queries of random ClusterSetIP names and 64-byte round trips through the egress, the
tunnel and a real east-west gateway, 100/s each, from a probe process of their own. Also prints the lag
from each change to the agent's DNS answer, against a bare aetcd watch. This is tests/bench/scale.py's
harness with fewer sites and only these rows.

    .venv/bin/python -m tests.bench.churn [--sites 60] [--seconds 5] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from tests.bench import scale
from tests.bench.scalereport import table

ROWS = ("load", "ready", "dns_all", "listen", "tunnels", "prop_rate", "floor_rate", "cpu_change",
        "dns_idle", "dns_churn", "rtt_idle", "rtt_churn")


async def run(args: argparse.Namespace) -> int:
    bench = scale.parser().parse_args([
        "--sites", str(args.sites), "--spaced", "0", "--rate", str(args.rate), "--rate-seconds", str(args.seconds),
        "--idle-seconds", str(args.seconds), "--no-admin", "--propagation-timeout", "30", "--sync-timeout", "300",
    ])  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="meshfed-churn-"))
    try:
        result = await scale.Measurement(bench, args.sites, tmp).go()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"agent mirroring {args.sites} sites ({min(5000, 50 * args.sites)} services); churn: "
          f"{args.rate:.0f} endpoint changes/s for {args.seconds:.0f}s, each by one site")
    print(table([result], rows=ROWS))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=60, help="simulated sites (default 60: 3,000 services)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of churn, and of the idle reference")
    parser.add_argument("--rate", type=float, default=100.0, help="endpoint changes per second")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
