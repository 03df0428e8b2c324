"""Selecting and paging the admin documents: filters, name order, cursors, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.agent.reporting import format_report, registry_report
from federation.agent.selection import EVERYTHING, MAX_LIMIT, Selection, parse_selection
from federation.core.errors import ConfigError
from tests.pkihelp import export, view
from tests.util import site

KEYS = [(ns, name) for ns in ("a", "a-b", "shop") for name in ("web", "db", "x-1")]


def test_filters_by_glob_and_bare_name() -> None:
    assert Selection(service="shop/*").wants_service("shop", "db")
    assert not Selection(service="shop/*").wants_service("a", "db")
    assert Selection(service="web").wants_service("a-b", "web")
    assert not Selection(service="web").wants_service("a-b", "webby")
    assert Selection(service="*/x-?").wants_service("a", "x-1")


@given(st.integers(1, 12), st.sampled_from([None, "web", "shop/*", "a*/*"]))
def test_following_next_visits_every_match_once_in_name_order(limit: int, pattern: str | None) -> None:
    seen: list[tuple[str, str]] = []
    after = None
    for _ in range(len(KEYS) + 1):
        page, after, _ = Selection(service=pattern, limit=limit, after=after).page(KEYS)
        assert len(page) <= limit
        seen.extend(page)
        if after is None:
            break
    everything, last, _ = Selection(service=pattern).page(KEYS)
    assert last is None
    assert seen == everything
    assert [f"{a}/{b}" for a, b in seen] == sorted(f"{a}/{b}" for a, b in seen)


@pytest.mark.parametrize(("query", "reason"), [
    ({"limit": "ten"}, "limit='ten' is not a number"),
    ({"limit": "0"}, f"limit=0 is outside 1..{MAX_LIMIT}"),
    ({"sites": "east"}, "unknown query parameter(s) sites"),
])
def test_bad_parameters_are_named(query: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_selection(query)


def test_no_parameters_select_everything() -> None:
    assert parse_selection({}) == EVERYTHING


def test_a_registry_page_shows_its_services_and_says_how_to_go_on() -> None:
    v = view([site("east", "n1"), site("west", "n2")],
             [export("east", "shop", f"svc{i}", 80) for i in range(5)] + [export("west", "shop", "svc0", 80)])
    whole = registry_report(v, {}, source="test")
    assert "page" not in whole
    assert len(whole["services"]) == 5
    page = registry_report(v, {}, source="test", selection=Selection(limit=2))
    assert [s["name"] for s in page["services"]] == ["svc0", "svc1"]
    assert page["page"]["next"] == "shop/svc1"
    assert page["page"]["matched"] == 5
    assert "(more: add --after shop/svc1)" in format_report(page)
    west = registry_report(v, {"/meshfed/v1/sites/east/services/x/y": "bad"}, source="test",
                           selection=Selection(site="west"))
    assert [s["name"] for s in west["sites"]] == ["west"]
    assert [s["name"] for s in west["services"]] == ["svc0"]
    assert {e["site"] for e in west["services"][0]["endpoints"]} == {"west"}
    assert west["rejected"] == []
