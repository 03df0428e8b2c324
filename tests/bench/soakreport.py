"""The soak's report: one markdown table per rate, meshfed against the direct reference (see soak.py)."""

from __future__ import annotations

import itertools
import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.bench.soak import Run, Sample

def _slope(samples: list[Sample], lo: float, hi: float) -> float:
    """RSS growth in KiB per minute over [lo, hi] (least squares)."""
    pts = [(s.t, s.rss / 1024) for s in samples if lo <= s.t <= hi]
    if len(pts) < 3:
        return float("nan")
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mr = sum(r for _, r in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    return 60 * sum((t - mt) * (r - mr) for t, r in pts) / var if var else float("nan")


def _series(text: str, name: str, label: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def summarize(runs: list[Run], connections: int) -> str:
    """One markdown table per rate: a row per measure, a column per path, and meshfed's ratio to direct."""
    out: list[str] = []
    for rate in sorted({r.rate for r in runs}):
        mesh = next((r for r in runs if r.rate == rate and r.path == "meshfed"), None)
        ref = next((r for r in runs if r.rate == rate and r.path == "direct"), None)
        cols = [r for r in (mesh, ref) if r is not None]
        rows = [_measures(r) for r in cols]
        out += [f"{connections} connections, {rate:.0f} opened and closed per second "
                f"(each lives {connections / rate:.0f} s)", "",
                "| measure | " + " | ".join(r.path for r in cols) + (" | meshfed / direct |" if ref and mesh else " |"),
                "| --- |" + " --- |" * (len(cols) + (1 if ref and mesh else 0))]
        for key in rows[0]:
            cells = [row.get(key, "-") for row in rows]
            ratio = ""
            if ref is not None and mesh is not None and key in _RATIO:
                m, d = rows[0].get(key + " raw"), rows[1].get(key + " raw")
                ratio = f" | {float(m) / float(d):.2f}x" if m and d and float(d) else " | -"
            elif ref is not None and mesh is not None:
                ratio = " | "
            if key.endswith(" raw"):
                continue
            out.append(f"| {key} | " + " | ".join(cells) + ratio + " |")
        out.append("")
    return "\n".join(out)


_RATIO = ("p50 ms", "p99 ms", "failed")


def _measures(run: Run) -> dict[str, str]:
    m: dict[str, str] = {}
    final = next((line for line in reversed(run.lines) if line.get("final")), None)
    if final is None:
        return {"opened": "no summary from the load (see its log; --keep)"}
    fails = sum(final["failed"].values())
    flat = [line for line in run.lines if not line.get("final")
            and run.phases["flat_from"] <= line["t"] <= run.phases["flat_to"]]
    open_flat = int(statistics.median(line["open"] for line in flat)) if flat else 0
    m["opened"] = str(final["opened"])
    m["failed"] = f"{fails} ({', '.join(f'{k} {v}' for k, v in final['failed'].items()) or '-'})"
    m["failed raw"] = str(fails)
    m["open while flat (median)"] = str(open_flat)
    m["load client late at worst ms"] = str(final.get("lag_ms", "-"))
    for key in ("p50_ms", "p99_ms"):
        m[key.replace("_", " ")] = "-" if final[key] is None else f"{final[key]:.1f}"
        m[key.replace("_", " ") + " raw"] = "" if final[key] is None else str(final[key])
    for name in ("west", "east", "sample"):
        s = run.samples.get(name)
        if not s:
            continue
        base = s[0].rss
        at_flat = [x for x in s if run.phases["flat_from"] <= x.t <= run.phases["flat_to"]]
        per = ((statistics.median(x.rss for x in at_flat) - base) / max(open_flat, 1) / 1024 if at_flat
               else float("nan"))
        cpu = [(b.cpu - a.cpu) / (b.t - a.t) for a, b in itertools.pairwise(s)
               if run.phases["flat_from"] <= a.t <= run.phases["flat_to"]]
        m[f"{name} RSS start MiB"] = f"{base / 2**20:.0f}"
        m[f"{name} KiB per open connection"] = f"{per:.1f}"
        m[f"{name} RSS slope while flat KiB/min"] = f"{_slope(s, run.phases['flat_from'], run.phases['flat_to']):+.0f}"
        m[f"{name} RSS after close / start"] = f"{s[-1].rss / base:.2f}x"
        m[f"{name} fds most"] = str(max(x.fds for x in s))
        m[f"{name} CPU most (10 s)"] = f"{100 * max(cpu, default=0):.0f} %"
    if run.path == "meshfed":
        shed = _series(run.metrics.get("west", ""), "meshfed_egress_connections_total", 'result="shed"')
        over = _series(run.metrics.get("east", ""), "meshfed_gateway_refusals_total", 'reason="overload"')
        m["shed (west egress / east gateway)"] = f"{shed:.0f} / {over:.0f}"
        m["lease expired"] = "yes" if run.phases.get("leases_changed") else "no"
        m["least lease time left s (TTL 10)"] = " / ".join(f"{k} {v:.1f}" for k, v in sorted(run.lease_left.items()))
        m["site records deleted"] = f"{run.phases.get('site_deletes', 0):.0f}"
    m["processes died"] = ", ".join(sorted(run.died)) or "none"
    return m
