"""The agents' /metrics as Prometheus scrapes them: promtool-clean, and every series the dashboard reads.

The demo's stage on loopback (a Kubernetes-style site, two VM sites, one with LAN discovery), with
traffic through the gateways and the direct path first, so the labelled series exist too.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.devkit.stage import ZONE, Demo, get_url
from tests.metricshelp import (
    dashboard,
    exposed_metrics,
    expressions,
    promtool,
    promtool_check_metrics,
    queried_metrics,
)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """site -> the text of its agent's /metrics, after some traffic."""
    demo = Demo(tmp_path_factory.mktemp("metrics") / "demo", netns=False, out=io.StringIO(), lan_discovery="edge")
    try:
        demo.up()
        for site, service in (("west", "web"), ("edge", "api")):
            ok, body, _ = demo.wait_curl(site, demo.url(site, service))
            assert ok, body
        for site, where in demo.sites.items():
            # answered: the Kubernetes site with its ClusterIP, the loopback VM sites with NODATA (no VIPs there)
            assert demo.resolve(site, f"web.shop.svc.{ZONE}").returncode == (0 if where.kubernetes else 1)
        pages = {}
        for site in demo.sites:
            with get_url(demo.admin(site) + "/metrics") as resp:
                pages[site] = resp.read().decode()
        yield pages
    finally:
        demo.down()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("site", ["east", "west", "edge"])
def test_promtool_finds_nothing_to_complain_about(scraped: dict[str, str], site: str) -> None:
    if promtool() is None:
        pytest.skip("promtool is missing (Debian package prometheus; ./bootstrap.sh installs it)")
    out = promtool_check_metrics(scraped[site])
    assert out.returncode == 0, out.stdout + out.stderr
    assert (out.stdout + out.stderr).strip() == ""


@pytest.mark.timeout(180)
def test_every_series_the_dashboard_reads_is_exposed(scraped: dict[str, str]) -> None:
    exposed = set().union(*(exposed_metrics(text) for text in scraped.values()))
    missing = queried_metrics(dashboard()) - exposed
    assert not missing, f"the dashboard queries series no agent exposes: {sorted(missing)}"


@pytest.mark.timeout(180)
def test_every_series_an_agent_exposes_is_on_the_dashboard(scraped: dict[str, str]) -> None:
    """A new metric gets a panel in deploy/grafana/meshfed.json (and a line in docs/operations.md)."""
    exposed = set().union(*(exposed_metrics(text) for text in scraped.values()))
    assert len(exposed) > 30
    unshown = exposed - queried_metrics(dashboard())
    assert not unshown, f"series no panel shows: {sorted(unshown)}"


@pytest.mark.timeout(180)
def test_each_kind_of_site_exposes_its_own_series(scraped: dict[str, str]) -> None:
    east, west, edge = (exposed_metrics(scraped[s]) for s in ("east", "west", "edge"))
    assert "meshfed_kubernetes_exports" in east
    assert "meshfed_vm_check_ready" in west
    assert "meshfed_vm_discovered_services" in edge
    assert "meshfed_gateway_streams_total" in east
    assert 'meshfed_gateway_streams_total{status="ok"}' in scraped["east"]  # west's requests came through
    assert 'meshfed_egress_attempts_total{result="ok",route="direct"}' in scraped["edge"]


@pytest.mark.timeout(180)
def test_every_series_is_in_the_operations_guide(scraped: dict[str, str]) -> None:
    import re

    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    table = guide[guide.index("## Every metric"):]
    documented = set(re.findall(r"`(meshfed_[a-z0-9_]+)`", table))
    exposed = set().union(*(exposed_metrics(text) for text in scraped.values()))
    assert exposed - documented == set(), "add these to the table in docs/operations.md"
    assert documented - exposed == set(), "the table names series no agent exposes"


@pytest.mark.timeout(180)
def test_the_dashboard_groups_by_labels_the_series_have(scraped: dict[str, str]) -> None:
    """`sum by (result)` over a series without a `result` label draws one nameless line: catch the typo."""
    import re

    from prometheus_client.parser import text_string_to_metric_families

    labels: dict[str, set[str]] = {}
    for text in scraped.values():
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
    checked = 0
    for expr in expressions(dashboard()):
        for by, inner in re.findall(r"by \(([^)]*)\) \((.*?)\)\)?$", expr):
            names = set(re.findall(r"\bmeshfed_[a-z0-9_]+", inner))
            for name in names & labels.keys():
                wanted = {label.strip() for label in by.split(",")} - {"instance", "job"}
                assert wanted <= labels[name], f"{expr}: {name} has labels {sorted(labels[name])}"
                checked += 1
    assert checked > 20
