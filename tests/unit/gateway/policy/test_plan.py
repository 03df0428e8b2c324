"""The prepared route choice: split, outlier health and locality together, with retries elsewhere."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from federation.core.policy.model import LocalityPolicy, OutlierDetection, Rules, Spill, SplitTarget
from gateway.policy.outlier import Outliers
from gateway.policy.plan import RoutePlan
from gateway.policy.split import selects
from gateway.policy.steering import Candidate, Place

CLIENT = Place("west", "net-w", "eu", "eu-1")
GATEWAYS = {"east": ("gw",), "edge": ("gw1", "gw2")}


def eps(site: str, network: str, region: str, n: int, version: str = "v1") -> list[Candidate]:
    return [Candidate(site, f"10.{len(site)}.{len(version)}.{i}", 80, Place(site, network, region, f"{region}-1"),
                      (("version", version),)) for i in range(n)]


CANDS = eps("west", "net-w", "eu", 2) + eps("east", "net-e", "eu", 3) + eps("edge", "net-x", "us", 3) \
    + eps("east", "net-e", "eu", 1, version="v2")


def test_routes_are_direct_on_our_network_and_through_the_site_gateways_elsewhere() -> None:
    plan = RoutePlan(CLIENT, CANDS, Rules(), GATEWAYS)
    assert plan.routes[0].gateways == ()
    assert plan.routes[2].gateways == (("east", "gw"),)
    assert plan.routes[5].gateways == (("edge", "gw1"), ("edge", "gw2"))
    assert plan.routes[2].endpoint == ("east", CANDS[2].address, 80)


def test_nearest_first_then_failover_when_the_own_site_and_then_a_gateway_die() -> None:
    plan = RoutePlan(CLIENT, CANDS, Rules(), GATEWAYS)
    outliers, rng = Outliers(OutlierDetection()), random.Random(3)

    def sites(now: float) -> set[str]:
        healthy = outliers.health(plan.routes, now).healthy
        return {plan.choose(healthy, rng).candidate.site for _ in range(300)}  # type: ignore[union-attr]

    assert sites(0.0) == {"west"}
    for route in plan.routes[:2]:  # both west endpoints refuse three times
        for _ in range(3):
            outliers.endpoint_failed(route.endpoint, 0.0, known=len(CANDS))
    assert sites(1.0) == {"east"}  # same region next, through east's gateway
    outliers.gateway_failed(("east", "gw"), 1.0)
    outliers.gateway_failed(("east", "gw"), 1.0)
    assert sites(2.0) == {"edge"}  # east's only gateway is out: the whole site, rightly
    assert sites(100.0) == {"west"}  # ejections expire


def test_a_canary_split_with_retries_elsewhere() -> None:
    rules = Rules(split=(SplitTarget(90, labels=(("version", "v1"),)), SplitTarget(10, labels=(("version", "v2"),))))
    plan = RoutePlan(CLIENT, CANDS, rules, GATEWAYS)
    rng = random.Random(20240501)
    healthy = [True] * len(CANDS)
    counts = Counter(plan.choose(healthy, rng).target for _ in range(10_000))
    assert abs(counts[1] / 10_000 - 0.10) <= 0.02
    v2 = len(CANDS) - 1
    retry = plan.choose(healthy, random.Random(1), exclude={v2})  # the only v2 endpoint failed
    assert retry.candidate is not None
    assert retry.index != v2
    assert retry.target == 0


@given(st.lists(st.booleans(), min_size=len(CANDS), max_size=len(CANDS)),
       st.lists(st.integers(0, len(CANDS) - 1), unique=True, max_size=4), st.sampled_from(list(Spill)),
       st.integers(0, 100), st.randoms(use_true_random=False))
def test_a_choice_is_healthy_not_excluded_and_in_its_target(healthy: list[bool], exclude: list[int], spill: Spill,
                                                            v2_weight: int, rng: random.Random) -> None:
    rules = Rules(locality=LocalityPolicy(spill=spill), split=(
        SplitTarget(100 - v2_weight, site="east"), SplitTarget(v2_weight, labels=(("version", "v2"),))))
    plan = RoutePlan(CLIENT, CANDS, rules, GATEWAYS)
    got = plan.choose(healthy, rng, exclude=set(exclude))
    usable = [h and i not in exclude for i, h in enumerate(healthy)]
    if not any(usable):
        assert got.candidate is None
        return
    assert got.index is not None
    assert usable[got.index]
    assert got.candidate == CANDS[got.index]
    if got.target is not None:
        assert selects(rules.split[got.target], CANDS[got.index])
