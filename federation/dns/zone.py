"""The federated zone as plain data: MCS names built from a mesh snapshot, for both answer paths.

Pure: no IO, no logging. `ZoneBuilder.build(view, stale_sites, vips)` turns a `MeshView` into an
immutable `Zone` of per-name `Node`s (nodes.py), rebuilding only the services that changed since the
last build; `_service` holds the KEP-1645 naming of one service.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import dns.name

from federation.core.endpoints import EndpointAddresses, RemoteEndpoint, hostname_of
from federation.core.records import Endpoint, ServiceExport, ServiceType, Site
from federation.core.view import FederatedService, MeshView, ServiceId, VipTable
from federation.core.vips import VipAddresses
from federation.dns.nodes import (
    AAAA,
    DNS_VERSION,
    IN,
    NAMESERVER_LABEL,
    NS,
    PTR,
    SOA,
    SRV,
    TXT,
    A,
    Labels,
    Node,
    Zone,
    labels_of,
    name_of,
    pack,
    packed,
    reverse_labels,
)

__all__ = ["AAAA", "DNS_VERSION", "IN", "NS", "PTR", "SOA", "SRV", "TXT", "A", "Labels", "Node", "Zone",
           "ZoneBuilder", "labels_of", "name_of", "reverse_labels"]

_EMPTY = Node()
Remote = tuple[tuple[RemoteEndpoint, ...], frozenset[str]] | None
"""A headless service's remote endpoints with their addresses here, and its sites on other networks (None: off)."""
Stale = str | tuple[str, str, str]
"""Answered last: a site (stale records, gateways down), or (site, ns, name) where active health found none ready."""

# ---------------------------------------------------------------- building a zone


class _Part(NamedTuple):
    """One service's share of the zone, and what it was built from."""

    fingerprint: tuple[FederatedService, tuple[Site | None, ...], frozenset[str], tuple[str, ...], Site | None, Remote]
    nodes: Mapping[Labels, Node]
    ents: tuple[Labels, ...]


class ZoneBuilder:
    """Builds `Zone`s from mesh views, rebuilding only the services that changed.

    The catalog keeps unchanged records as the same objects from view to view, so a service whose
    exports, site records, staleness and VIPs are all the same objects as last time is not touched:
    one registry change costs one service's rebuild plus a copy of the name table.
    """

    def __init__(self, zone: str, *, local_site: str, ttl: int = 5, site_pinning: bool = False,
                 nameservers: Iterable[str] = ()) -> None:
        self.origin = dns.name.from_text(zone).canonicalize()
        self.apex = labels_of(self.origin)
        self.local_site = local_site
        self.ttl = ttl
        self.site_pinning = site_pinning
        self._hosts: dict[ServiceId, dict[str, tuple[ServiceExport, object, dict[int, tuple[Labels, Node]]]]] = {}
        """Headless services: each export's host names and nodes, while the export is the same object."""
        self._here: Site | None = None
        """This site as the answers see it: name, network and locality only (the last the registry showed)."""
        self._parts: dict[tuple[str, str], _Part] = {}
        self._nodes: dict[Labels, Node] = {(b"dns-version", *self.apex): Node(txt=(DNS_VERSION.encode(),))}
        self._ent_refs: dict[Labels, int] = {}
        self._part_nodes: dict[ServiceId, Mapping[Labels, Node]] = {}
        self._owner: dict[Labels, ServiceId] = {}
        """The service whose part holds each name (names of the zone's own, apex and version, have none)."""
        self._shared: dict[Labels, dict[ServiceId, Node]] = {}
        """Names more than one service's part holds, with each one's node."""
        self._moved: set[ServiceId] = set()
        """Services a shared name moved to or from in this build (the fast path encodes them again)."""
        self._site_services: dict[str, set[ServiceId]] = {}
        self._built: tuple[MeshView, frozenset[Stale], VipTable, Site | None, EndpointAddresses | None] | None = None
        self._nodes_view = MappingProxyType(self._nodes)
        self._parts_view = MappingProxyType(self._part_nodes)
        self._owners_view = MappingProxyType(self._owner)
        self.set_nameservers(nameservers)

    def set_nameservers(self, addresses: Iterable[str]) -> None:
        """The server's own addresses, answered for `ns.<zone>` (the apex NS record's glue)."""
        ns = (NAMESERVER_LABEL.encode(), *self.apex)
        a, aaaa = pack(addresses)
        self._nodes[self.apex] = Node(soa=True, ns=(ns,), glue=(ns,))
        self._nodes[ns] = Node(a=a, aaaa=aaaa)

    def build(self, view: MeshView, stale_sites: frozenset[Stale], vips: VipTable,
              endpoints: EndpointAddresses | None = None) -> Zone:
        """The zone for `view`; `stale_sites` (see Stale) are left out wherever another site has ready endpoints.

        With `endpoints` (this site's addresses for headless endpoints of other networks) those endpoints
        are answered at their address here, and one without an address is left out; without, every
        headless endpoint is answered at its own addresses.

        Only the services that can have changed since the last build are looked at: those the view says
        changed, those of sites whose staleness flipped, those whose VIPs changed. A build after a
        registry change costs in proportion to that change, not to the mesh.
        """
        seen = view.sites.get(self.local_site)
        if seen is not None and (self._here is None or (seen.network, seen.locality) !=
                                 (self._here.network, self._here.locality)):
            self._here = Site(self.local_site, seen.network, seen.locality)
        # Only this site's network and locality shape the answers, and they hold while its record is
        # briefly gone (a lease that expired under load) or rewritten (new gateways): no full rebuild then.
        local = self._here
        services = view.services()
        todo = self._todo(view, stale_sites, vips, local, endpoints)
        full = todo is None
        if todo is None:
            todo = set(services) | set(self._parts)
        for key in todo:
            svc = services.get(key)
            old = self._parts.get(key)
            if svc is None:
                self._hosts.pop(key, None)
                if old is not None:
                    self._remove(key, old)
                    del self._parts[key]
                    self._forget(key, old)
                continue
            exports = svc.exports
            stale = frozenset(e.site for e in exports if e.site in stale_sites or (e.site, *key) in stale_sites)
            if stale and not _staleness_matters(exports, stale):
                stale = frozenset()
            addrs = vips.get(key, ()) if svc.type is ServiceType.CLUSTER_SET_IP else ()
            remote = None if endpoints is None or svc.type is not ServiceType.HEADLESS else (
                endpoints.get(key, ()), endpoints.far(key))
            fingerprint = (svc, tuple(view.sites.get(e.site) for e in exports), stale, addrs, local, remote)
            if old is not None and old.fingerprint == fingerprint:
                continue
            nodes = self._service(svc, view.sites, stale, addrs, local, remote)
            new = _Part(fingerprint, nodes, self._ents(nodes))
            if old is not None:
                self._remove(key, old)
                self._forget(key, old)
            self._add(key, new)
            self._parts[key] = new
            self._part_nodes[key] = nodes
            for e in exports:
                self._site_services.setdefault(e.site, set()).add(key)
        self._built = (view, stale_sites, vips, local, endpoints)
        moved, self._moved = frozenset(self._moved), set()
        changed = None if full else frozenset(todo) | moved
        return Zone(self.origin, self.ttl, view.revision % 2**32, self._nodes_view, self._parts_view, changed, moved,
                    self._owners_view)

    def _todo(self, view: MeshView, stale: frozenset[Stale], vips: VipTable, local: Site | None,
              endpoints: EndpointAddresses | None) -> set[ServiceId] | None:
        """The services that can have changed since the last build; None: all of them."""
        if self._built is None:
            return None
        before, stale_before, vips_before, local_before, endpoints_before = self._built
        if local != local_before or view.history is None or view.history is not before.history:
            return None
        if (endpoints is None) != (endpoints_before is None):
            return None
        changes = view.changes_since(before.generation)
        if changes is None:
            return None
        todo = set(changes.services)
        for item in stale ^ stale_before:
            todo |= self._site_services.get(item, set()) if isinstance(item, str) else {(item[1], item[2])}
        if vips is not vips_before and not (_of_view(vips, view) and _of_view(vips_before, before)):
            todo |= {k for k in vips.keys() | vips_before.keys() if vips.get(k) != vips_before.get(k)}
        if endpoints is not None and endpoints_before is not None and endpoints is not endpoints_before:
            moved = endpoints.changes_since(endpoints_before)  # else: per service, the same tuple while unchanged
            todo |= moved if moved is not None else {k for k in endpoints.keys() | endpoints_before.keys()
                                                     if endpoints.get(k) is not endpoints_before.get(k)}
        return todo

    def _forget(self, key: ServiceId, part: _Part) -> None:
        self._part_nodes.pop(key, None)
        svc = part.fingerprint[0]
        for e in svc.exports:
            keys = self._site_services.get(e.site)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._site_services[e.site]

    def _add(self, key: ServiceId, part: _Part) -> None:
        for name, node in part.nodes.items():
            owner = self._owner.get(name)
            if owner is None or owner == key:
                self._owner[name] = key
                self._nodes[name] = node
                continue
            # Two services own one name (a VIP two allocations claim, say): the smaller key's answer
            # stands, whatever the order of changes, until one of them lets go.
            shared = self._shared.setdefault(name, {owner: self._nodes[name]})
            shared[key] = node
            first = min(shared)
            if first != owner:
                self._moved.add(owner)
            self._owner[name], self._nodes[name] = first, shared[first]
        for name in part.ents:
            self._ent_refs[name] = self._ent_refs.get(name, 0) + 1
            self._nodes.setdefault(name, _EMPTY)  # an empty non-terminal: NODATA, never NXDOMAIN

    def _remove(self, key: ServiceId, part: _Part) -> None:
        for name in part.nodes:
            shared = self._shared.get(name)
            if shared is not None:
                shared.pop(key, None)
                first = min(shared)
                self._moved.add(first)
                self._owner[name], self._nodes[name] = first, shared[first]
                if len(shared) == 1:
                    del self._shared[name]
                continue
            self._owner.pop(name, None)
            if self._ent_refs.get(name):
                self._nodes[name] = _EMPTY
            else:
                self._nodes.pop(name, None)
        for name in part.ents:
            refs = self._ent_refs[name] - 1
            if refs:
                self._ent_refs[name] = refs
            else:
                del self._ent_refs[name]
                if self._nodes.get(name) is _EMPTY:
                    del self._nodes[name]

    # -- private

    def _name(self, *labels: str) -> Labels:
        return (*map(str.encode, labels), *self.apex)

    def _ents(self, part: Mapping[Labels, Node]) -> tuple[Labels, ...]:
        out: set[Labels] = set()
        depth = len(self.apex)
        for name in part:
            if name[-depth:] != self.apex:
                continue
            for i in range(1, len(name) - depth):
                parent = name[i:]
                if parent not in part:
                    out.add(parent)
        return tuple(out)

    def _service(
        self,
        svc: FederatedService,
        sites: Mapping[str, Site],
        stale: frozenset[str],
        vips: tuple[str, ...],
        local: Site | None,
        remote: Remote = None,
    ) -> Mapping[Labels, Node]:
        ns, name = svc.namespace, svc.name
        base = self._name(name, ns, "svc")
        nodes: dict[Labels, Node] = {}
        if svc.type is ServiceType.CLUSTER_SET_IP:
            self._hosts.pop((ns, name), None)  # headless before, perhaps
            a, aaaa = pack(vips)
            # The bare name's SRV: one per port, as Kubernetes DNS answers `<svc>.<ns>.svc.cluster.local`.
            nodes[base] = Node(a=a, aaaa=aaaa, srv=_spread((0, p.port, base) for p in svc.ports), glue=(base,))
            for vip in vips:
                nodes[reverse_labels(packed(vip))] = Node(ptr=base)
            for port in svc.ports:
                srv_name = (f"_{port.name}".encode(), f"_{port.protocol.value.lower()}".encode(), *base)
                nodes[srv_name] = Node(srv=((0, 0, port.port, base),), glue=(base,))
        else:
            ordered = self._order(svc.exports, sites, stale, local)
            if not ordered:
                return nodes  # no ready endpoint: the name does not exist (KEP-1645: NXDOMAIN)
            targets: list[tuple[ServiceExport, Endpoint, Labels]] = []
            hosts_of = self._hosts_of(svc, remote)
            v4: dict[bytes, None] = {}
            v6: dict[bytes, None] = {}
            for export, ep in ordered:
                hit = hosts_of[export.site].get(id(ep))
                if hit is None:
                    continue  # another network's endpoint without an address here: never an unroutable one
                host, node = hit
                nodes[host] = node
                targets.append((export, ep, host))
                v4.update(dict.fromkeys(node.a))
                v6.update(dict.fromkeys(node.aaaa))
            if not targets:
                return {}
            a, aaaa = tuple(v4), tuple(v6)
            hosts = tuple(host for _, _, host in targets)
            # One SRV per ready endpoint and port (identical records collapse, as in any RRset).
            bare = _spread((0, ep.port_for(p), host) for p in svc.ports for export, ep, host in targets
                           if svc.serves(export.site, p.name))
            nodes[base] = Node(a=a, aaaa=aaaa, srv=bare, glue=hosts)
            for port in svc.ports:
                srv_name = (f"_{port.name}".encode(), f"_{port.protocol.value.lower()}".encode(), *base)
                srv = tuple((0, ep.weight, ep.port_for(port), host) for export, ep, host in targets
                            if svc.serves(export.site, port.name))
                if srv:
                    nodes[srv_name] = Node(srv=srv, glue=tuple(dict.fromkeys(t for *_, t in srv)))
        if self.site_pinning and local is not None:
            # An extension (the KEP says these names must not exist): only for sites whose endpoints the
            # asker can reach, i.e. this site and sites on its network, never an unroutable address.
            for export in svc.exports:
                site = sites.get(export.site)
                if export.site != self.local_site and (site is None or site.network != local.network):
                    continue
                eps = self._order([export], sites, frozenset(), local)
                if eps:
                    a, aaaa = pack([addr for _, ep in eps for addr in ep.addresses])
                    nodes[self._name(export.site, name, ns, "svc")] = Node(a=a, aaaa=aaaa)
        return nodes

    def _hosts_of(self, svc: FederatedService, remote: Remote) -> dict[str, dict[int, tuple[Labels, Node]]]:
        """Site -> (id of each endpoint -> its host name and node), kept per export while the export is the
        same object: one endpoint change rebuilds the names of its own export, not of the service's.

        With `remote` (the endpoint table's entry: addresses here, and the sites on other networks), an
        endpoint of such a site is named at its address here, and one without an address is left out."""
        key = (svc.namespace, svc.name)
        old = self._hosts.get(key, {})
        new: dict[str, tuple[ServiceExport, object, dict[int, tuple[Labels, Node]]]] = {}
        here: dict[str, dict[str, str]] = {}
        for r in remote[0] if remote is not None else ():
            here.setdefault(r.site, {})[r.hostname] = r.address
        for export in svc.exports:
            far = remote is not None and export.site in remote[1]
            mine = here.get(export.site) if far else None
            tag = (far, tuple(sorted(mine.items())) if mine else ())
            hit = old.get(export.site)
            if hit is None or hit[0] is not export or hit[1] != tag:
                made: dict[int, tuple[Labels, Node]] = {}
                for ep in export.endpoints:
                    label = hostname_of(ep)
                    addresses = ep.addresses if not far else ((mine or {})[label],) if label in (mine or {}) else ()
                    if not addresses:
                        continue
                    a, aaaa = pack(addresses)
                    made[id(ep)] = (self._name(label, export.site, svc.name, svc.namespace, "svc"),
                                    Node(a=a, aaaa=aaaa))
                hit = (export, tag, made)
            new[export.site] = hit
        self._hosts[key] = new
        return {site: made for site, (_, _, made) in new.items()}

    def _order(
        self,
        exports: Iterable[ServiceExport],
        sites: Mapping[str, Site],
        stale: frozenset[str],
        local: Site | None,
    ) -> list[tuple[ServiceExport, Endpoint]]:
        """Ready endpoints: the local site's first, then nearest locality; stale sites only as a last resort."""
        ready = [(e, ep) for e in exports for ep in e.endpoints if ep.ready]
        fresh = [(e, ep) for e, ep in ready if e.site not in stale]
        chosen = fresh or ready
        here = local.locality if local is not None else None

        def rank(item: tuple[ServiceExport, Endpoint]) -> tuple[int, int, str]:
            export, ep = item
            if export.site == self.local_site:
                return (0, 0, "")
            site = sites.get(export.site)
            loc = ep.locality if ep.locality.region else (site.locality if site else ep.locality)
            near = 3
            if here is not None and here.region and loc.region == here.region:
                near = 1 if here.zone and loc.zone == here.zone else 2
            return (1, near, export.site)

        return sorted(chosen, key=rank)


def _of_view(vips: VipTable, view: MeshView) -> bool:
    """True when `vips` are `view`'s own VIPs: the view's changes already name the services whose VIPs changed."""
    return isinstance(vips, VipAddresses) and vips.allocations is view.vips


def _spread(records: Iterable[tuple[int, int, Labels]]) -> tuple[tuple[int, int, int, Labels], ...]:
    """SRV records (priority, port, target) without duplicates, sharing a weight of 100 as CoreDNS does."""
    unique = list(dict.fromkeys(records))
    weight = max(1, 100 // len(unique)) if unique else 0
    return tuple((prio, weight, port, target) for prio, port, target in unique)


def _staleness_matters(exports: tuple[ServiceExport, ...], stale: frozenset[str]) -> bool:
    """False when leaving stale sites out changes nothing: a VIP answer, or no fresh ready endpoint."""
    return not all(e.type is ServiceType.CLUSTER_SET_IP for e in exports) and any(
        ep.ready for e in exports if e.site not in stale for ep in e.endpoints)

