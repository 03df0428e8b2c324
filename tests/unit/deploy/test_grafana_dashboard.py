"""deploy/grafana/meshfed.json: a dashboard Grafana can import, whose queries Prometheus accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.metricshelp import DASHBOARD, as_plain_promql, dashboard, expressions, panels, promtool


def test_every_panel_reads_the_chosen_prometheus_and_agents() -> None:
    dash = dashboard()
    assert dash["uid"] == "meshfed-agents"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= variables.keys()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description"), f"{p['title']}: say what the panel means"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert 'job=~"$job", instance=~"$instance"' in t["expr"], f"{p['title']}: {t['expr']}"


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: set[tuple[int, int]] = set()
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as Prometheus would, once Grafana has filled in its variables."""
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is missing (Debian package prometheus; ./bootstrap.sh installs it)")
    rules = [{"record": f"meshfed:dashboard:q{i}", "expr": as_plain_promql(e)}
             for i, e in enumerate(expressions(dashboard()))]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout


def test_the_dashboard_is_where_the_docs_say() -> None:
    docs = (DASHBOARD.parents[2] / "docs" / "operations.md").read_text()
    assert "deploy/grafana/meshfed.json" in docs
