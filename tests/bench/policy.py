"""Cost of the traffic-policy decisions per new connection, and the accuracy of a 90/10 split.

For one service with --endpoints endpoints spread over --sites sites, it times the per-connection work
of the prepared decisions (faults, breaker, outlier health, split and locality choice) against today's
per-connection work (`balancing.routes` over the mesh view, then the endpoint picker's order), measured
in the same run, and prints both and their ratio; then the shares 10,000 connections get at 90/10.

    .venv/bin/python -m tests.bench.policy [--endpoints 60] [--sites 6] [--connections 20000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Callable

from federation.core.policy.model import Abort, AbortKind, FaultRule, OutlierDetection, Rules, SplitTarget
from federation.core.policy.model import CircuitBreaker as BreakerSettings
from federation.core.records import Endpoint, Gateway, Locality, ServiceExport, ServicePort, Site
from federation.core.view import MeshView
from gateway.balancing import EndpointPicker, Target, routes
from gateway.policy import faults, steering
from gateway.policy.breaker import Breaker
from gateway.policy.outlier import Outliers
from gateway.policy.plan import RoutePlan
from tests.dnshelp import view


def build(endpoints: int, sites: int) -> tuple[MeshView, list[Site]]:
    site_list = [Site(f"s{i}", f"net-{i % 3}", Locality(f"r{i % 2}", f"z{i % 4}"),
                      gateways=(Gateway("gw", f"198.18.{i}.1"),)) for i in range(sites)]
    exports = [ServiceExport(s.name, "shop", "web", (ServicePort("http", 80),), endpoints=tuple(
        Endpoint((f"10.{i}.0.{j}",), labels=(("version", "v2" if j % 10 == 0 else "v1"),))
        for j in range(endpoints // sites))) for i, s in enumerate(site_list)]
    return view(site_list, exports), site_list


def per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=60)
    ap.add_argument("--sites", type=int, default=6)
    ap.add_argument("--connections", type=int, default=20_000)
    args = ap.parse_args()
    mesh, sites = build(args.endpoints, args.sites)
    rng = random.Random(1)
    client = steering.Place("s0", "net-0", "r0", "z0")
    picker = EndpointPicker()
    turn = iter(range(10**9))

    def today() -> object:
        rs = routes(mesh, "s0", "shop", "web", "http", next(turn))
        return picker.order(("shop", "web"), [Target(f"10.0.0.{i}", 80) for i in range(len(rs))], 0.0)

    rules = Rules(split=(SplitTarget(90, labels=(("version", "v1"),)), SplitTarget(10, labels=(("version", "v2"),))))
    faults_rules = (FaultRule(source_sites=("s9",), abort=Abort(AbortKind.REFUSE, 50)),)
    outliers, breaker = Outliers(OutlierDetection()), Breaker(BreakerSettings())
    gateways = {s.name: tuple(g.name for g in s.gateways) for s in sites}
    cands = steering.candidates(mesh, "shop", "web", "http")

    def prepare() -> RoutePlan:
        return RoutePlan(client, cands, rules, gateways)

    plan = prepare()
    for _ in range(3):  # one endpoint ejected, as in a service with a fault
        outliers.endpoint_failed(plan.routes[-1].endpoint, 0.0, len(cands))

    def policy() -> object:
        faults.decide(faults_rules, "s0", None, rng)
        breaker.open()
        choice = plan.choose(outliers.health(plan.routes, 1.0).healthy, rng)
        breaker.close()
        return choice

    n = args.connections
    today_s, policy_s = per_call(today, n), per_call(policy, n)
    prepare_s = per_call(prepare, max(1, n // 100))
    print(f"{args.endpoints} endpoints over {args.sites} sites, {n} connections each")
    print(f"  today (routes + picker order):           {today_s * 1e6:8.1f} us per connection")
    print(f"  policy (faults, breaker, health, choice): {policy_s * 1e6:8.1f} us per connection")
    print(f"  ratio policy / today:                    {policy_s / today_s:8.2f}")
    print(f"  preparing the plan (per view or policy change): {prepare_s * 1e6:.1f} us")
    srng = random.Random(20240501)
    healthy = [True] * len(cands)
    shares = Counter(plan.choose(healthy, srng).target for _ in range(10_000))
    print(f"  split 90/10 at 10,000 connections: {shares[0] / 100:.2f} % / {shares[1] / 100:.2f} %")


if __name__ == "__main__":
    main()
