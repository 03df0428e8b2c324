"""The mesh as its readers use it: typed registry events, the MCS conflict rule and immutable snapshots. Pure."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from federation.core.records import ServiceExport, ServicePort, ServiceType, Site
from federation.core.vips import Allocation, Claim

ExportId = tuple[str, str, str]
"""(site, namespace, name)"""
ServiceId = tuple[str, str]
"""(namespace, name): a service's identity across the mesh (MCS namespace sameness)."""
PortId = tuple[str, str, str]
"""(namespace, name, port name): one port of a service, e.g. what an egress listener serves."""

VipTable = Mapping[ServiceId, tuple[str, ...]]
"""The addresses that reach each ClusterSetIP service from this site: the mesh VIPs on VM sites, the
derived Services' ClusterIPs on Kubernetes sites. A service missing from it has no address yet (NODATA)."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SiteAdded:
    site: Site


@dataclass(frozen=True, slots=True)
class SiteChanged:
    site: Site
    previous: Site


@dataclass(frozen=True, slots=True)
class SiteRemoved:
    site: Site


@dataclass(frozen=True, slots=True)
class ServiceAdded:
    export: ServiceExport


@dataclass(frozen=True, slots=True)
class ServiceChanged:
    export: ServiceExport
    previous: ServiceExport


@dataclass(frozen=True, slots=True)
class ServiceRemoved:
    export: ServiceExport


Event = SiteAdded | SiteChanged | SiteRemoved | ServiceAdded | ServiceChanged | ServiceRemoved


# ---------------------------------------------------------------- federated view


@dataclass(frozen=True, slots=True)
class Conflict:
    """A site whose export disagrees with the winning (oldest) export of the same service."""

    site: str
    reason: str
    kind: str = "ports"
    """What differs: "type" or "ports" (MCS TypeConflict / PortConflict)."""


@dataclass(frozen=True, slots=True)
class FederatedService:
    """One service across the mesh: the winning spec and the agreeing exports."""

    namespace: str
    name: str
    type: ServiceType
    ports: tuple[ServicePort, ...]
    exports: tuple[ServiceExport, ...]
    conflicts: tuple[Conflict, ...] = ()

    @property
    def sites(self) -> tuple[str, ...]:
        """Sites whose export is part of the service."""
        return tuple(e.site for e in self.exports)


def resolve(exports: Iterable[ServiceExport]) -> FederatedService:
    """Merge the exports of one service: the oldest export's ports and type win (MCS), others conflict."""
    ordered = sorted(exports, key=lambda e: (e.exported_at, e.site))
    if not ordered:
        raise ValueError("resolve needs at least one export")
    winner = ordered[0]
    spec = winner.spec()
    members: list[ServiceExport] = []
    conflicts: list[Conflict] = []
    for e in ordered:
        if e.spec() == spec:
            members.append(e)
            continue
        kind = "type" if e.type != winner.type else "ports"
        if kind == "type":
            reason = f"type {e.type.value} differs from {winner.type.value} exported first by {winner.site}"
        else:
            reason = (
                f"ports {_ports_text(e.ports)} differ from {_ports_text(winner.ports)} "
                f"exported first by {winner.site}"
            )
        conflicts.append(Conflict(e.site, reason, kind))
    return FederatedService(
        namespace=winner.namespace,
        name=winner.name,
        type=winner.type,
        ports=winner.ports,
        exports=tuple(sorted(members, key=lambda e: e.site)),
        conflicts=tuple(conflicts),
    )


def _ports_text(ports: tuple[ServicePort, ...]) -> str:
    return ",".join(f"{p.name}/{p.port}/{p.protocol.value}" for p in sorted(ports, key=lambda p: p.port))


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed between two views: services whose federated service (or a site it is exported from)
    changed, and sites whose record came, went or changed."""

    services: frozenset[ServiceId] = frozenset()
    sites: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.services or self.sites)


class ChangeLog:
    """The last `depth` views' changes, so a reader that skipped views still learns what it missed. Pure."""

    def __init__(self, depth: int = 4096) -> None:
        self._entries: deque[tuple[int, Changes]] = deque(maxlen=depth)

    def append(self, generation: int, changes: Changes) -> None:
        """Record the changes that made view `generation`."""
        self._entries.append((generation, changes))

    def since(self, after: int, upto: int) -> Changes | None:
        """The union of the changes of views after `after` up to `upto`; None when some were forgotten."""
        if after >= upto:
            return Changes()
        if not self._entries or self._entries[0][0] > after + 1:
            return None
        services: set[ServiceId] = set()
        sites: set[str] = set()
        for generation, changes in reversed(self._entries):
            if generation <= after:
                break
            if generation <= upto:
                services |= changes.services
                sites |= changes.sites
        return Changes(frozenset(services), frozenset(sites))


@dataclass(frozen=True, slots=True)
class MeshView:
    """An immutable snapshot of the mesh for answering (DNS, egress, CLI).

    The catalog builds each one from persistent maps, so a new view costs in proportion to what changed,
    and `changes_since` tells a reader what changed since the view it handled last.
    """

    sites: Mapping[str, Site]
    exports: Mapping[ExportId, ServiceExport]
    revision: int = 0
    complete: bool = True
    """False only for the empty view a reader holds before its first listing: nothing may be answered
    authoritatively, deleted or withdrawn from it (Istio's HasSynced)."""
    generation: int = 0
    """Grows by one with every view that changed something."""
    resolved: Mapping[ServiceId, FederatedService] | None = field(default=None, compare=False, repr=False)
    """The federated services, as the catalog keeps them; computed from `exports` when not given."""
    history: ChangeLog | None = field(default=None, compare=False, repr=False)
    vips: Mapping[ServiceId, Allocation] = field(default_factory=dict, compare=False, repr=False)
    """The mesh-wide VIP allocation of each ClusterSetIP service."""
    claims: Mapping[str, Claim] = field(default_factory=dict, compare=False, repr=False)
    """Every claimed VIP address, with the service it is claimed for."""
    _memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Results computed once per snapshot (the snapshot never changes, so they stay right)."""

    @classmethod
    def before_sync(cls) -> MeshView:
        """The view a reader has before its first complete listing."""
        return cls(sites={}, exports={}, complete=False)

    def services(self) -> Mapping[ServiceId, FederatedService]:
        """Every federated service, conflict rule applied; exports of sites without a site record are left out.

        Read-only and not copied: the catalog's views share it; views built by hand compute it once.
        """
        if self.resolved is not None:
            return self.resolved
        cached: Mapping[ServiceId, FederatedService] | None = self._memo.get("services")
        if cached is None:
            grouped: dict[ServiceId, list[ServiceExport]] = {}
            for export in self.exports.values():
                if export.site in self.sites:
                    grouped.setdefault(export.service, []).append(export)
            cached = MappingProxyType({svc: resolve(group) for svc, group in sorted(grouped.items())})
            self._memo["services"] = cached
        return cached

    def service(self, namespace: str, name: str) -> FederatedService | None:
        """One federated service, or None."""
        return self.services().get((namespace, name))

    def changes_since(self, generation: int) -> Changes | None:
        """What changed after view `generation` up to this one; None when that is not known (do it all again)."""
        if self.history is None:
            return None if generation != self.generation else Changes()
        return self.history.since(generation, self.generation)
