"""Weighted split between sites and label subsets: accuracy, health and the never-unreachable fallback."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from federation.core.policy.model import SplitTarget
from gateway.policy.split import select, selects
from gateway.policy.steering import Candidate, Place


def eps(site: str, n: int = 2, healthy: bool = True, version: str | None = None) -> list[Candidate]:
    labels = (("version", version),) if version else ()
    return [Candidate(site, f"10.{len(site)}.{len(version or '')}.{i}", 80, Place(site, f"net-{site}"), labels,
                      healthy=healthy) for i in range(n)]


SITES_90_10 = (SplitTarget(90, site="east"), SplitTarget(10, site="west"))


def test_90_10_between_sites_lands_within_2_percent_at_10000_picks() -> None:
    cands = eps("east", 3) + eps("west", 1)
    rng = random.Random(20240501)
    counts = Counter(select(SITES_90_10, cands, rng).index for _ in range(10_000))
    assert abs(counts[0] / 10_000 - 0.90) <= 0.02
    assert abs(counts[1] / 10_000 - 0.10) <= 0.02


def test_90_10_between_label_subsets_lands_within_2_percent_at_10000_picks() -> None:
    targets = (SplitTarget(90, labels=(("version", "v1"),)), SplitTarget(10, labels=(("version", "v2"),)))
    cands = eps("east", 4, version="v1") + eps("west", 4, version="v1") + eps("west", 1, version="v2")
    rng = random.Random(7)
    picks = [select(targets, cands, rng) for _ in range(10_000)]
    share_v2 = sum(1 for s in picks if s.index == 1) / 10_000
    assert abs(share_v2 - 0.10) <= 0.02
    assert all(all(c.label("version") == ("v2" if s.index else "v1") for c in s.members) for s in picks)


def test_a_target_with_nothing_healthy_gives_its_share_to_the_others() -> None:
    cands = eps("east", healthy=False) + eps("west")
    rng = random.Random(1)
    assert {select(SITES_90_10, cands, rng).index for _ in range(200)} == {1}


def test_with_no_target_able_to_serve_unselected_then_all_endpoints_serve() -> None:
    cands = eps("east", healthy=False) + eps("west", healthy=False) + eps("edge")
    s = select(SITES_90_10, cands, random.Random(1))
    assert s.index is None
    assert {c.site for c in s.members} == {"edge"}
    assert "unselected" in s.fallback
    everything = eps("east", healthy=False) + eps("west", healthy=False)
    s = select(SITES_90_10, everything, random.Random(1))
    assert s.index is None
    assert s.members == everything  # steering then finds nothing healthy and refuses
    assert "every endpoint" in s.fallback


def test_weight_zero_drains_but_serves_as_a_last_resort() -> None:
    targets = (SplitTarget(0, site="east"), SplitTarget(100, site="west"))
    cands = eps("east") + eps("west")
    rng = random.Random(1)
    assert {select(targets, cands, rng).index for _ in range(200)} == {1}
    s = select(targets, eps("east") + eps("west", healthy=False), rng)
    assert s.index is None
    assert any(c.site == "east" for c in s.members)


def test_no_split_selects_everything() -> None:
    cands = eps("east")
    assert select((), cands, random.Random(1)).members == cands


def test_site_and_labels_together() -> None:
    t = SplitTarget(100, site="west", labels=(("version", "v2"),))
    assert selects(t, eps("west", version="v2")[0])
    assert not selects(t, eps("west", version="v1")[0])
    assert not selects(t, eps("east", version="v2")[0])


# ---------------------------------------------------------------- properties

candidate_lists = st.lists(
    st.builds(lambda site, v, h, i: Candidate(site, f"10.0.{i}.1", 80, Place(site, "n"),
                                              (("version", v),) if v else (), healthy=h),
              st.sampled_from(["east", "west", "edge"]), st.sampled_from([None, "v1", "v2"]), st.booleans(),
              st.integers(0, 255)),
    max_size=10)
target_lists = st.lists(st.builds(SplitTarget, st.integers(0, 100).map(float),
                                  st.sampled_from([None, "east", "west"]),
                                  st.sampled_from([(), (("version", "v1"),), (("version", "v2"),)])),
                        max_size=3).filter(lambda ts: all(t.site or t.labels for t in ts))


@given(target_lists, candidate_lists, st.randoms(use_true_random=False))
def test_a_drawn_target_is_live_and_the_split_never_hides_a_healthy_endpoint(
        targets: list[SplitTarget], cands: list[Candidate], rng: random.Random) -> None:
    s = select(targets, cands, rng)
    assert all(c in cands for c in s.members)
    if s.index is not None:
        t = targets[s.index]
        assert t.weight > 0
        assert all(selects(t, c) for c in s.members)
        assert any(c.healthy for c in s.members)
    if any(c.healthy for c in cands):
        assert any(c.healthy for c in s.members)


def test_a_drained_subset_serves_when_the_rest_has_nothing_healthy() -> None:
    targets = (SplitTarget(100, site="east"), SplitTarget(0, site="west"))
    cands = eps("east", healthy=False) + eps("west") + eps("edge", healthy=False)
    s = select(targets, cands, random.Random(1))
    assert any(c.healthy and c.site == "west" for c in s.members)
