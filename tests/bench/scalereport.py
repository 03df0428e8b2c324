"""The table of the scale benchmark: what each run measured, beside issue 11's goal at 1,000 sites. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

INF = math.inf


def pct(values: Sequence[float], p: float) -> float:
    """The p-quantile (nearest rank) of `values`; inf where it falls on a value never seen (inf)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * p) - 1))]


def seconds(v: float) -> str:
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "never"
    return f"{v:.2f} s" if v >= 0.1 else f"{v * 1e3:.1f} ms"


def ms(v: float) -> str:
    if math.isnan(v):
        return "-"
    return "timeout" if math.isinf(v) else f"{v * 1e3:.2f}"


def ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return math.nan
    return a / b


def times(v: float) -> str:
    return "-" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.2f}x")


@dataclass(slots=True)
class Cell:
    """One measured number as printed, and whether it meets the row's goal (None: no goal or not measured)."""

    text: str
    ok: bool | None = None

    def show(self) -> str:
        return self.text + ("" if self.ok is None else (" ok" if self.ok else " MISS"))


def never(reason: str) -> Cell:
    return Cell(f"never: {reason}", ok=False)


def skipped(reason: str) -> Cell:
    return Cell(f"not measured: {reason}")


@dataclass(slots=True)
class Run:
    """What one run (one site count) measured, row by row."""

    sites: int
    cells: dict[str, Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load_average: str = ""

    def put(self, row: str, text: str, ok: bool | None = None) -> None:
        self.cells[row] = Cell(text, ok)


ROWS: list[tuple[str, str, str]] = [
    # (key, what, goal at 1,000 sites)
    ("load", "bulk load into etcd (keys, MiB, transactions)", ""),
    ("ready", "agent start to ready (/readyz)", ""),
    ("dns_all", "agent start to every service answered in DNS (last VIP)", "<= 15 s"),
    ("cpu", "agent CPU (user+system) to that point", ""),
    ("rss", "agent RSS after sync", "<= 512 MiB"),
    ("hwm", "agent RSS peak (VmHWM, end of run)", "<= 512 MiB"),
    ("listen", "agent listening sockets (TCP listen + UDP)", "<= 100 in capture mode"),
    ("tunnels", "agent established TCP connections (pre-opened tunnels)", ""),
    ("prop_spaced", "change to DNS answer, 100 changes 20 ms apart: p50 / p99", "p99 <= 1 s"),
    ("floor_spaced", "  bare aetcd watch floor, same changes: p50 / p99 (agent/floor p50)", "p50 <= 2x floor"),
    ("prop_rate", "change to DNS answer under churn (100 changes/s for 10 s): p50 / p99", "p99 <= 1 s"),
    ("floor_rate", "  bare aetcd watch floor, same changes: p50 / p99 (agent/floor p50)", "p50 <= 2x floor"),
    ("cpu_change", "agent CPU per change (until seen or given up): spaced / churn", ""),
    ("dns_idle", "DNS latency idle: p50 / p99 ms", ""),
    ("dns_churn", "DNS latency under churn: p50 / p99 ms (p99 ratio)", "p99 <= 2x idle"),
    ("rtt_idle", "tunnel RTT idle: p50 / p99 ms", ""),
    ("rtt_churn", "tunnel RTT under churn: p50 / p99 ms (p99 ratio)", "<= 1.5x idle"),
    ("status_full", "/status, full document", ""),
    ("status_page", "/status?limit=100 (one page)", "<= 1 s"),
    ("registry_full", "/registry, full document", ""),
    ("registry_page", "/registry?limit=100 (one page)", "<= 1 s"),
]


def table(runs: Sequence[Run], rows: Sequence[str] | None = None) -> str:
    """A markdown table: one row per measurement (all, or those keyed in `rows`), one column per site
    count, the goal last."""
    head = ["measurement", *(f"{r.sites} sites" for r in runs), "goal at 1,000 sites"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key, what, goal in ROWS:
        if rows is not None and key not in rows:
            continue
        cells = [r.cells.get(key, Cell("-")).show() for r in runs]
        lines.append("| " + " | ".join([what, *cells, goal or "-"]) + " |")
    lines.append("| load average at the start (1/5/15 min) | " + " | ".join(r.load_average for r in runs) + " | - |")
    for r in runs:
        for note in r.notes:
            lines.append(f"\n- {r.sites} sites: {note}")
    return "\n".join(lines)


def samples(result: dict[str, Any], what: str) -> list[float]:
    """A probe's latencies, each query that timed out or failed counted as never answered (inf)."""
    lost = int(result.get(f"{what}_timeouts", 0)) + int(result.get(f"{what}_errors", 0))
    return [*result.get(what, []), *[float("inf")] * lost]


def latency(values: list[float]) -> str:
    if not values:
        return "no samples"
    lost = sum(1 for v in values if v == float("inf"))
    p50, p99 = pct(values, .5), pct(values, .99)
    return (f"{'lost' if p50 == float('inf') else f'{p50 * 1e3:.2f}'} / {'lost' if p99 == float('inf') else f'{p99 * 1e3:.2f}'}"
            f" ({len(values)} samples" + (f", {lost} lost" if lost else "") + ")")
