"""The mesh as its readers use it: typed registry events, the MCS conflict rule and immutable snapshots. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.core.records import ServiceExport, ServicePort, ServiceType, Site

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
class MeshView:
    """An immutable snapshot of the mesh for answering (DNS, egress, CLI)."""

    sites: Mapping[str, Site]
    exports: Mapping[ExportId, ServiceExport]
    revision: int = 0
    complete: bool = True
    """False only for the empty view a reader holds before its first listing: nothing may be answered
    authoritatively, deleted or withdrawn from it (Istio's HasSynced)."""
    _memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Results computed once per snapshot (the snapshot never changes, so they stay right)."""

    @classmethod
    def before_sync(cls) -> MeshView:
        """The view a reader has before its first complete listing."""
        return cls(sites={}, exports={}, complete=False)

    def services(self) -> dict[tuple[str, str], FederatedService]:
        """Every federated service, conflict rule applied; exports of sites without a site record are left out.

        Computed once per snapshot: DNS, egress, VIPs and every new client connection ask for it.
        """
        cached: dict[tuple[str, str], FederatedService] | None = self._memo.get("services")
        if cached is None:
            grouped: dict[tuple[str, str], list[ServiceExport]] = {}
            for export in self.exports.values():
                if export.site in self.sites:
                    grouped.setdefault(export.service, []).append(export)
            cached = {svc: resolve(group) for svc, group in sorted(grouped.items())}
            self._memo["services"] = cached
        return dict(cached)

    def service(self, namespace: str, name: str) -> FederatedService | None:
        """One federated service, or None (a dictionary lookup once `services()` has been computed)."""
        cached: dict[tuple[str, str], FederatedService] | None = self._memo.get("services")
        if cached is None:
            self.services()
            cached = self._memo["services"]
        return cached.get((namespace, name))
