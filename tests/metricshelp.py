"""Test helpers for metrics: the Grafana dashboard's queries, and what an agent's /metrics exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "meshfed.json"
_NAME = re.compile(r"\bmeshfed_[a-z0-9_]+")
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("", "_sum", "_count"), "info": ("_info",)}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row (rows may also hold collapsed panels)."""
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        if p["type"] == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def expressions(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dash) for t in p.get("targets", [])]


def queried_metrics(dash: dict[str, Any]) -> set[str]:
    """The meshfed series names the dashboard's queries read (as exposed: counters with _total)."""
    return {name for expr in expressions(dash) for name in _NAME.findall(expr)}


def exposed_metrics(text: str) -> set[str]:
    """The series names a /metrics page defines, with or without samples yet (labelled counters start empty)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return {n for n in names if n.startswith("meshfed_") and not n.endswith("_created")}


def as_plain_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus itself would receive it."""
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
            .replace("$job", ".*").replace("$instance", ".*"))


def promtool() -> str | None:
    return shutil.which("promtool")


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    tool = promtool()
    assert tool is not None
    return subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
                          check=False)
