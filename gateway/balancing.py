"""Pure choices of the data plane: which endpoint or gateway to try, in what order; which egress listeners to run.

No IO, no clock: time and round-robin turns come in as arguments.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from federation.core.endpoints import hostname_of
from federation.core.records import Gateway, Labels, Locality, Protocol, ServiceExport, ServicePort
from federation.core.view import MeshView, PortId, VipTable

ListenerKey = PortId
"""(namespace, service, port name)"""
Bind = tuple[str, int]
"""(host, port) a listener binds; port 0 lets the kernel choose"""


@dataclass(frozen=True, slots=True)
class Target:
    """An endpoint address and port to connect to."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class Direct:
    """Connect straight to an endpoint of a site on our own network."""

    site: str
    target: Target


@dataclass(frozen=True, slots=True)
class ViaGateway:
    """Tunnel through a gateway of a site on another network."""

    site: str
    gateway: Gateway
    subset: Labels = ()
    """The split target's labels: the gateway picks only endpoints carrying them (empty: any endpoint)."""


Route = Direct | ViaGateway


@dataclass(frozen=True, slots=True)
class Placement:
    """Where egress listeners bind: on a service's VIP where this host holds that VIP (a VM site; clients
    use the DNS name unchanged), else on `fallback` (loopback and port 0 unless configured)."""

    fallback: Bind = ("127.0.0.1", 0)
    vips: VipTable = field(default_factory=dict)
    """The mesh VIPs of each service (IPv4 and IPv6)."""
    held: frozenset[str] = frozenset()
    """The VIPs this host's VIP interface holds now."""

    def bind(self, key: ListenerKey, port: int) -> Bind:
        """Where the listener of `key` (service port number `port`) binds."""
        for vip in self.vips.get((key[0], key[1]), ()):
            if ":" not in vip and port and vip in self.held:
                return vip, port
        return self.fallback


@dataclass(frozen=True, slots=True)
class Open:
    """Start a listener for `key` on `bind`."""

    key: ListenerKey
    bind: Bind


@dataclass(frozen=True, slots=True)
class Close:
    """Stop the listener for `key`."""

    key: ListenerKey


def find_port(ports: Sequence[ServicePort], port: str | int) -> ServicePort | None:
    """The service port named `port` (a name) or numbered `port` (an int)."""
    for p in ports:
        if (p.name == port) if isinstance(port, str) else (p.port == port):
            return p
    return None


def endpoint_targets(export: ServiceExport, port: ServicePort, hostname: str | None = None,
                     subset: Labels = ()) -> list[Target]:
    """Targets of the ready endpoints of `export` for `port` (only the one named `hostname`, if given: its
    hostname, or for one without, its first address dashed as DNS names it; only those carrying every
    label of `subset`)."""
    return [
        Target(e.addresses[0], e.port_for(port))
        for e in export.endpoints
        if e.ready and e.addresses and (hostname is None or hostname_of(e) == hostname)
        and all(e.label(k) == v for k, v in subset)
    ]


class EndpointPicker:
    """Round robin over targets, with those that refused within `penalty` seconds tried last."""

    def __init__(self, penalty: float = 10.0, capacity: int = 4096) -> None:
        self.penalty = penalty
        self.capacity = capacity
        self._turns: OrderedDict[object, int] = OrderedDict()
        self._refused: OrderedDict[Target, float] = OrderedDict()

    def order(self, key: object, targets: Sequence[Target], now: float) -> list[Target]:
        """The order to try `targets` in for this request; advances the turn of `key`."""
        if not targets:
            return []
        turn = self._turns.pop(key, 0)
        self._turns[key] = turn + 1
        while len(self._turns) > self.capacity:
            self._turns.popitem(last=False)
        start = turn % len(targets)
        rotated = list(targets[start:]) + list(targets[:start])
        fresh = [t for t in rotated if self._refused.get(t, 0.0) <= now]
        return fresh + [t for t in rotated if t not in fresh]

    def refused(self, target: Target, now: float) -> None:
        """Remember that `target` refused a connection at `now`."""
        self._refused.pop(target, None)
        self._refused[target] = now + self.penalty
        while len(self._refused) > self.capacity:
            self._refused.popitem(last=False)


def routes(view: MeshView, own_site: str, namespace: str, name: str, port_name: str, turn: int = 0) -> list[Route]:
    """Where a client of `namespace/name:port_name` may be sent, best first.

    Endpoints of sites on our own network first (direct), then gateways of other sites with ready
    endpoints: same zone, then same region, then any; rotated by `turn` within each tier.
    """
    svc = view.service(namespace, name)
    if svc is None:
        return []
    own = view.sites.get(own_site)
    direct: list[Route] = []
    tiers: dict[int, list[Route]] = {0: [], 1: [], 2: []}
    for export in svc.exports:
        site = view.sites.get(export.site)
        port = find_port(export.ports, port_name)
        # A site whose port of this name has another number or protocol gets none of its traffic (MCS).
        if site is None or port is None or not svc.serves(export.site, port_name):
            continue
        targets = endpoint_targets(export, port)
        if not targets:
            continue
        if export.site == own_site or (own is not None and site.network == own.network):
            direct.extend(Direct(export.site, t) for t in targets)
        else:
            tier = _tier(own.locality if own is not None else Locality(), site.locality)
            tiers[tier].extend(ViaGateway(export.site, g) for g in site.gateways)
    out = _rotate(direct, turn)
    for tier in (0, 1, 2):
        out.extend(_rotate(tiers[tier], turn))
    return out


class SiteHealth:
    """Sites whose gateway the egress could not reach lately (connect, TLS or identity failure).

    A site is down from its latest failure until a tunnel to it works again, or for `hold` seconds.
    Pure: time comes in as an argument. DNS leaves such sites out while other sites can serve.
    """

    def __init__(self, hold: float = 30.0) -> None:
        self.hold = hold
        self._failed: dict[str, float] = {}

    def failed(self, site: str, now: float) -> None:
        """A tunnel to `site`'s gateway failed at `now`."""
        self._failed[site] = now

    def succeeded(self, site: str) -> bool:
        """A tunnel to `site` worked; True if it was down."""
        return self._failed.pop(site, None) is not None

    def next_expiry(self) -> float | None:
        """When the oldest failure's hold runs out, if any site is down."""
        return min(self._failed.values()) + self.hold if self._failed else None

    def down(self, now: float) -> frozenset[str]:
        """The sites whose gateway failed within the last `hold` seconds and has not worked since."""
        for site in [s for s, t in self._failed.items() if now - t >= self.hold]:
            del self._failed[site]
        return frozenset(self._failed)


def desired_listeners(view: MeshView, own_site: str, include_own: bool = False) -> set[ListenerKey]:
    """The egress listeners to run: one per TCP port of every service another site exports.

    With `include_own` also for services only this site exports: a VM site's clients reach its own
    services at their VIP too (on Kubernetes they use the cluster's own Service instead).
    """
    out: set[ListenerKey] = set()
    for service in view.services():
        out |= listeners_of(view, service, own_site, include_own)
    return out


def listeners_of(view: MeshView, service: tuple[str, str], own_site: str,
                 include_own: bool = False) -> set[ListenerKey]:
    """`desired_listeners` for one service."""
    svc = view.service(*service)
    if svc is None or not (include_own or any(e.site != own_site for e in svc.exports)):
        return set()
    return {(service[0], service[1], p.name) for p in svc.ports if p.protocol is Protocol.TCP}


def plan(desired: Mapping[ListenerKey, Bind], actual: Mapping[ListenerKey, Bind]) -> list[Open | Close]:
    """Operations turning the running listeners `actual` into `desired`: closes first, then opens."""
    ops: list[Open | Close] = []
    for key in sorted(actual):
        if key not in desired or _moved(desired[key], actual[key]):
            ops.append(Close(key))
    for key in sorted(desired):
        if key not in actual or _moved(desired[key], actual[key]):
            ops.append(Open(key, desired[key]))
    return ops


def _moved(want: Bind, have: Bind) -> bool:
    # A wanted port 0 is satisfied by whatever port the kernel chose.
    return want[0] != have[0] or (want[1] != 0 and want[1] != have[1])


def _tier(own: Locality, other: Locality) -> int:
    if own.region and own.region == other.region:
        return 0 if own.zone and own.zone == other.zone else 1
    return 2


def _rotate(items: list[Route], turn: int) -> list[Route]:
    if not items:
        return []
    k = turn % len(items)
    return items[k:] + items[:k]
