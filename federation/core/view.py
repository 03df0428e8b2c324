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
    """How one site's export of a conflicting service stands: every export of such a service gets one (MCS)."""

    site: str
    reason: str
    """For the operator: what differs, who exported first, what is used."""
    kind: str = "ports"
    """The first of `kinds`: "type" or "ports" (MCS TypeConflict / PortConflict), or another field."""
    kinds: tuple[str, ...] = ()
    """Every property that differs across the service's exports, in CONFLICT_KINDS order."""


CONFLICT_KINDS = ("type", "ports", "sessionAffinity", "sessionAffinityConfig", "internalTrafficPolicy",
                  "trafficDistribution", "ipFamilies", "labels", "annotations")
"""Properties that must agree across a service's exports, in the order conflicts name them."""


@dataclass(frozen=True, slots=True)
class FederatedService:
    """One service across the mesh: the winning spec, the agreeing exports, and what every site is told."""

    namespace: str
    name: str
    type: ServiceType
    ports: tuple[ServicePort, ...]
    """The union of the exports' ports; for a port name exported with different numbers, the oldest export's."""
    exports: tuple[ServiceExport, ...]
    """The exports of the winning type, by site."""
    conflicts: tuple[Conflict, ...] = ()
    serving: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Port name -> the sites whose export has that port exactly as `ports` has it (they get its traffic)."""
    session_affinity: str | None = None
    session_affinity_timeout: int | None = None
    internal_traffic_policy: str | None = None
    traffic_distribution: str | None = None
    ip_families: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def sites(self) -> tuple[str, ...]:
        """Sites whose export is part of the service."""
        return tuple(e.site for e in self.exports)

    def serves(self, site: str, port_name: str) -> bool:
        """True if `site`'s export gets the traffic of the service port `port_name`."""
        return site in self.serving.get(port_name, ())

    def conflict_of(self, site: str) -> Conflict | None:
        """The conflict reported to `site`, if the service has one."""
        return next((c for c in self.conflicts if c.site == site), None)


_FIELDS = (("sessionAffinity", "session_affinity"), ("sessionAffinityConfig", "session_affinity_timeout"),
           ("internalTrafficPolicy", "internal_traffic_policy"), ("trafficDistribution", "traffic_distribution"),
           ("ipFamilies", "ip_families"), ("labels", "exported_labels"), ("annotations", "exported_annotations"))
"""(conflict kind, ServiceExport attribute) of the properties carried to the import from the oldest export
that has them; an export without a value (a VM site's) neither sets nor contradicts them."""


def resolve(exports: Iterable[ServiceExport]) -> FederatedService:
    """Merge the exports of one service by the MCS rules, the oldest export winning each disagreement.

    The type is the oldest export's; exports of another type are left out. The ports are the union of
    the members' ports, a port name taking the oldest export's number and protocol, and its traffic
    going only to the exports that have it so. If anything differs, every export gets a Conflict.
    """
    ordered = sorted(exports, key=lambda e: (e.exported_at, e.site))
    if not ordered:
        raise ValueError("resolve needs at least one export")
    winner = ordered[0]
    members = [e for e in ordered if e.type == winner.type]
    union: dict[str, ServicePort] = {}
    first: dict[str, str] = {}
    for e in members:
        for p in e.ports:
            if p.name not in union:
                union[p.name], first[p.name] = p, e.site
    serving = {name: frozenset(e.site for e in members if p in e.ports) for name, p in union.items()}
    values: dict[str, Any] = {}
    differs: list[str] = []
    if len(members) != len(ordered):
        differs.append("type")
    if any(set(e.ports) != set(union.values()) for e in members):
        differs.append("ports")
    for kind, attr in _FIELDS:
        given = [(e.site, getattr(e, attr)) for e in members if getattr(e, attr) not in (None, ())]
        if given:
            values[attr] = given[0][1]
            if any(v != given[0][1] for _, v in given):
                differs.append(kind)
    conflicts = tuple(_conflict(e, winner, union, first, differs, values) for e in ordered) if differs else ()
    return FederatedService(
        namespace=winner.namespace,
        name=winner.name,
        type=winner.type,
        ports=tuple(union.values()),
        exports=tuple(sorted(members, key=lambda e: e.site)),
        conflicts=conflicts,
        serving=serving,
        session_affinity=values.get("session_affinity"),
        session_affinity_timeout=values.get("session_affinity_timeout"),
        internal_traffic_policy=values.get("internal_traffic_policy"),
        traffic_distribution=values.get("traffic_distribution"),
        ip_families=values.get("ip_families", ()),
        labels=values.get("exported_labels") or (),
        annotations=values.get("exported_annotations") or (),
    )


def _conflict(e: ServiceExport, winner: ServiceExport, union: dict[str, ServicePort], first: dict[str, str],
              differs: list[str], values: dict[str, Any]) -> Conflict:
    """What `e`'s site is told about the service's conflicts, in its own terms."""
    if e.type != winner.type:
        text = (f"type {e.type.value} differs from {winner.type.value} exported first by {winner.site}: "
                "this site's export is not used")
        return Conflict(e.site, text, "type", tuple(differs))
    notes = []
    if "type" in differs:
        notes.append(f"some sites export it with another type than {winner.type.value}; their exports are not used")
    if "ports" in differs:
        own = {p.name: p for p in e.ports}
        clash = [n for n, p in own.items() if union[n] != p]
        if clash:
            owner = first[clash[0]]
            notes.append(f"ports {_ports_text(tuple(own[n] for n in clash))} differ from "
                         f"{_ports_text(tuple(union[n] for n in clash))} exported first by {owner}: "
                         "this site gets no traffic for them")
        missing = [union[n] for n in union if n not in own]
        if missing:
            notes.append(f"ports {_ports_text(tuple(missing))} come from other sites")
        if not clash and not missing:
            notes.append(f"other sites export ports that differ from this site's {_ports_text(e.ports)}")
    for kind, attr in _FIELDS:
        mine = getattr(e, attr)
        if kind in differs and mine not in (None, ()) and mine != values.get(attr):
            notes.append(f"{kind} differs from the value exported first: that one is used")
        elif kind in differs:
            notes.append(f"other sites export another {kind}: this site's is used")
    kinds = tuple(differs)
    return Conflict(e.site, "; ".join(notes), kinds[0], kinds)


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
    refused_vips: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    """`mesh/vips/` keys holding a record this reader refuses (forged, unsigned...), with its etcd revision:
    the allocator replaces them, compare-and-swap, as it would create an absent one."""
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
