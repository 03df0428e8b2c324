"""Locality steering: priority levels, explicit failover, spill, distribute weights."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core.policy.model import DistributeRule, FailoverRule, LocalityPolicy, Spill
from federation.core.records import Endpoint, Locality, ServiceExport, ServicePort, Site
from gateway.policy.steering import (
    Candidate,
    Place,
    Steering,
    candidates,
    choose,
    level_loads,
    levels,
    locality_matches,
    pick,
    priority_key,
)
from tests.dnshelp import view

CLIENT = Place("west", "net-a", "eu", "eu-1")
DEFAULT = LocalityPolicy()


def loads_of(lvls: list[list[Candidate]], spill: Spill) -> list[float]:
    return level_loads([sum(c.healthy for c in lvl) / len(lvl) for lvl in lvls], spill)


def cand(site: str, network: str, region: str = "", zone: str = "", healthy: bool = True, n: int = 1,
         labels: tuple[tuple[str, str], ...] = (), weight: int = 1) -> list[Candidate]:
    return [Candidate(site, f"10.{len(site)}.0.{i}", 80, Place(site, network, region, zone), labels, weight, healthy)
            for i in range(n)]


def test_default_priority_is_own_network_then_region_then_zone() -> None:
    same_net_far = cand("lan", "net-a", "us", "us-1")
    other_net_same_zone = cand("east", "net-b", "eu", "eu-1")
    other_net_same_region = cand("north", "net-b", "eu", "eu-2")
    other_net_far = cand("south", "net-c", "ap", "ap-1")
    lvls = levels(CLIENT, other_net_far + other_net_same_region + other_net_same_zone + same_net_far, DEFAULT)
    assert [lvl[0].site for lvl in lvls] == ["lan", "east", "north", "south"]


def test_zone_only_counts_within_the_same_region() -> None:
    same_zone_name_elsewhere = cand("x", "net-b", "us", "eu-1")[0]
    assert priority_key(CLIENT, same_zone_name_elsewhere, DEFAULT) == (0, 0, 0)
    assert priority_key(Place("c", "net-a"), cand("y", "net-a")[0], DEFAULT) == (1, 0, 0)  # unknown locality


def test_explicit_failover_ranks_the_named_regions_after_our_own() -> None:
    policy = LocalityPolicy(failover=(FailoverRule("eu", "us"), FailoverRule("eu", "sa")))
    own = cand("east", "net-b", "eu", "eu-2", healthy=False)
    us, sa, ap = cand("usa", "net-c", "us"), cand("bra", "net-d", "sa"), cand("jap", "net-e", "ap")
    lvls = levels(CLIENT, ap + sa + us + own, policy)
    assert [lvl[0].site for lvl in lvls] == ["east", "usa", "bra", "jap"]
    rng = random.Random(1)
    assert {choose(CLIENT, ap + sa + us + own, policy, rng).site for _ in range(200)} == {"usa"}  # type: ignore[union-attr]


def test_site_and_label_priorities() -> None:
    policy = LocalityPolicy(failover_priority=("site", "tier=primary"))
    here = cand("west", "net-a", labels=(("tier", "backup"),))
    primary = cand("east", "net-b", labels=(("tier", "primary"),))
    other = cand("edge", "net-c")
    assert [lvl[0].site for lvl in levels(CLIENT, other + primary + here, policy)] == ["west", "east", "edge"]


def test_gradual_spill_follows_envoy_overprovisioning() -> None:
    def lvl(healthy: int, total: int) -> list[Candidate]:
        return [Candidate("s", str(i), 1, CLIENT, healthy=i < healthy) for i in range(total)]

    assert loads_of([lvl(10, 10), lvl(10, 10)], Spill.GRADUAL) == [1.0, 0.0]
    assert loads_of([lvl(8, 10), lvl(10, 10)], Spill.GRADUAL) == [1.0, 0.0]  # 80 % x 1.4 >= 100 %
    loads = loads_of([lvl(5, 10), lvl(10, 10)], Spill.GRADUAL)
    assert loads == pytest.approx([0.7, 0.3])
    assert loads_of([lvl(1, 10), lvl(0, 10)], Spill.GRADUAL) == [1.0, 0.0]  # scaled up: nothing else is healthy
    assert loads_of([lvl(0, 10), lvl(3, 10)], Spill.GRADUAL) == [0.0, 1.0]
    assert loads_of([lvl(1, 10), lvl(10, 10)], Spill.STRICT) == [1.0, 0.0]
    assert loads_of([lvl(0, 10), lvl(0, 10)], Spill.STRICT) == [0.0, 0.0]


def test_distribute_weights_and_unlisted_localities_as_failover() -> None:
    policy = LocalityPolicy(distribute=(DistributeRule("eu/*", (("eu/*", 80.0), ("us", 20.0))),))
    eu, us, ap = cand("east", "net-b", "eu", "eu-2", n=3), cand("usa", "net-c", "us", "us-1", n=2), cand("jap", "net-d", "ap")
    rng = random.Random(7)
    counts = Counter(choose(CLIENT, eu + us + ap, policy, rng).site for _ in range(10_000))  # type: ignore[union-attr]
    assert abs(counts["east"] / 10_000 - 0.80) <= 0.02
    assert abs(counts["usa"] / 10_000 - 0.20) <= 0.02
    assert counts["jap"] == 0
    dead = [Candidate(c.site, c.address, c.port, c.place, healthy=False) for c in eu + us]
    assert {choose(CLIENT, dead + ap, policy, rng).site for _ in range(50)} == {"jap"}  # type: ignore[union-attr]
    half = [Candidate(c.site, c.address, c.port, c.place, healthy=False) for c in eu]
    assert {choose(CLIENT, half + us + ap, policy, rng).site for _ in range(50)} == {"usa"}  # type: ignore[union-attr]


def test_locality_patterns() -> None:
    assert locality_matches("eu", "eu", "eu-1")
    assert locality_matches("eu/*", "eu", "")
    assert locality_matches("eu/eu-1", "eu", "eu-1")
    assert not locality_matches("eu/eu-1", "eu", "eu-2")
    assert locality_matches("*", "", "")
    assert locality_matches("*/eu-1", "us", "eu-1")
    assert not locality_matches("us", "eu", "eu-1")


def test_endpoint_weights_and_zero_weights() -> None:
    rng = random.Random(3)
    heavy = cand("a", "n", weight=3)[0]
    light = Candidate("a", "10.9.9.9", 80, heavy.place, weight=1)
    counts = Counter(pick([heavy, light], rng) for _ in range(8000))
    assert abs(counts[heavy] / 8000 - 0.75) <= 0.02
    drained = Candidate("a", "10.9.9.8", 80, heavy.place, weight=0)
    assert {pick([drained, light], rng) for _ in range(100)} == {light}
    assert pick([drained], rng) == drained  # all drained: still served rather than refused
    assert pick([], rng) is None


def test_candidates_from_the_mesh_view() -> None:
    sites = [Site("east", "net-b", Locality("eu", "eu-2")), Site("west", "net-a", Locality("eu", "eu-1"))]
    exports = [
        ServiceExport("east", "shop", "web", (ServicePort("http", 80),), endpoints=(
            Endpoint(("10.0.0.1",), ready=True, labels=(("version", "v2"),), weight=2),
            Endpoint(("10.0.0.2",), ready=False, locality=Locality("eu", "eu-3")))),
    ]
    got = candidates(view(sites, exports), "shop", "web", "http")
    assert [(c.address, c.port, c.healthy, c.place, c.labels, c.weight) for c in got] == [
        ("10.0.0.1", 80, True, Place("east", "net-b", "eu", "eu-2"), (("version", "v2"),), 2),
        ("10.0.0.2", 80, False, Place("east", "net-b", "eu", "eu-3"), (), 1),
    ]
    assert candidates(view(sites, exports), "shop", "web", "grpc") == []
    assert candidates(view(sites, exports), "shop", "nope", "http") == []


# ---------------------------------------------------------------- properties

places = st.builds(Place, st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["n1", "n2", "n3"]),
                   st.sampled_from(["", "eu", "us"]), st.sampled_from(["", "z1", "z2"]))
cands = st.lists(st.builds(Candidate, st.sampled_from(["a", "b", "c", "d"]), st.from_regex(r"\A10\.0\.0\.[0-9]\Z"),
                           st.just(80), places, st.just(()), st.integers(0, 3), st.booleans()), max_size=12)
policies = st.builds(LocalityPolicy, st.lists(st.sampled_from(["site", "network", "region", "zone"]), unique=True)
                     .map(tuple), st.just(()), st.just(()), st.sampled_from(list(Spill)))


@given(places, cands, policies, st.randoms(use_true_random=False))
def test_choice_is_healthy_and_none_only_when_nothing_is(client: Place, cs: list[Candidate], policy: LocalityPolicy,
                                                         rng: random.Random) -> None:
    got = choose(client, cs, policy, rng)
    if any(c.healthy for c in cs):
        assert got is not None
        assert got.healthy
        assert got in cs
    else:
        assert got is None


@given(places, cands, policies)
def test_loads_are_a_distribution_over_levels_with_health(client: Place, cs: list[Candidate],
                                                          policy: LocalityPolicy) -> None:
    lvls = levels(client, cs, policy)
    assert sorted(map(id, (c for lvl in lvls for c in lvl))) == sorted(map(id, cs))
    loads = loads_of(lvls, policy.spill)
    assert all(x >= 0 for x in loads)
    for load, lvl in zip(loads, lvls, strict=True):
        if not any(c.healthy for c in lvl):
            assert load == 0
    if any(c.healthy for c in cs):
        assert sum(loads) == pytest.approx(1.0)
        first = next(i for i, lvl in enumerate(lvls) if any(c.healthy for c in lvl))
        healthy_share = sum(c.healthy for c in lvls[first]) / len(lvls[first])
        if policy.spill is Spill.STRICT or healthy_share >= 1 / 1.4 + 1e-9:
            assert loads[first] == pytest.approx(1.0)  # the nearest level keeps everything
    else:
        assert sum(loads) == 0


@given(places, cands, st.randoms(use_true_random=False))
def test_strict_spill_never_leaves_the_nearest_healthy_level(client: Place, cs: list[Candidate],
                                                            rng: random.Random) -> None:
    policy = LocalityPolicy(spill=Spill.STRICT)
    got = choose(client, cs, policy, rng)
    healthy_keys = [priority_key(client, c, policy) for c in cs if c.healthy]
    if got is not None:
        assert priority_key(client, got, policy) == max(healthy_keys)


@given(places, cands, policies, st.randoms(use_true_random=False), st.data())
def test_a_prepared_steering_with_health_given_chooses_like_the_one_off_choice(
        client: Place, cs: list[Candidate], policy: LocalityPolicy, rng: random.Random, data: st.DataObject) -> None:
    healthy = data.draw(st.lists(st.booleans(), min_size=len(cs), max_size=len(cs)))
    state = rng.getstate()
    prepared = Steering(client, cs, policy).choose(healthy, rng)
    rng.setstate(state)
    with_health = [Candidate(c.site, c.address, c.port, c.place, c.labels, c.weight, h) for c, h in zip(cs, healthy, strict=True)]
    one_off = choose(client, with_health, policy, rng)

    def ident(c: Candidate | None) -> object:
        return None if c is None else (c.site, c.address, c.place, c.weight)

    assert ident(prepared) == ident(one_off)
    subset = data.draw(st.lists(st.integers(0, max(len(cs) - 1, 0)), unique=True)) if cs else []
    got = Steering(client, cs, policy, subset).choose_index(healthy, rng)
    assert got is None or (got in subset and healthy[got])
    assert (got is None) == (not any(healthy[i] for i in subset))
