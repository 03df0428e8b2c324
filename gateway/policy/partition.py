"""Partition behaviour: whether a service keeps its last known endpoints while the registry is stale. Pure.

"Stale since" is when this agent last heard from etcd (for the whole mesh) or, per site, when a site's
gateway stopped answering its probes (phase 2). The default keeps serving, as every agent does today.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from federation.core.policy.model import Partition, PartitionMode
from federation.core.policy.units import format_duration


@dataclass(frozen=True, slots=True)
class Serve:
    """Keep using the last known endpoints; they are `stale_for` seconds old (0: fresh)."""

    stale_for: float = 0.0


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Refuse new connections to the endpoints concerned; established ones are left alone."""

    reason: str


def decide(partition: Partition, stale_since: float | None, now: float) -> Serve | Withdraw:
    """What to do with the endpoints known since `stale_since` (None: the state is fresh) at `now`."""
    if stale_since is None:
        return Serve()
    stale_for = max(0.0, now - stale_since)
    if partition.mode is PartitionMode.KEEP_SERVING:
        return Serve(stale_for)
    if partition.mode is PartitionMode.FAIL_CLOSED:
        return Withdraw(f"state stale for {format_duration(stale_for)} and the policy fails closed")
    after = partition.after if partition.after is not None else 0.0
    if stale_for < after:
        return Serve(stale_for)
    return Withdraw(f"state stale for {format_duration(stale_for)}, longer than the {format_duration(after)} "
                    "the policy allows")


def withdrawn_sites(partition: Partition, stale_since: Mapping[str, float | None], now: float) -> dict[str, str]:
    """The sites whose endpoints the policy withdraws at `now`, with the reason."""
    out = {}
    for site, since in stale_since.items():
        verdict = decide(partition, since, now)
        if isinstance(verdict, Withdraw):
            out[site] = verdict.reason
    return out
