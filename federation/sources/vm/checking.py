"""Health check state machine and the export records it yields: pure, no IO, time as an argument."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from federation.core.records import Endpoint, EndpointPort, Locality, ServiceExport, ServicePort
from federation.sources.vm.settings import CheckSettings, VmServiceSettings

ServiceId = tuple[str, str]
"""(namespace, name)"""

UNKNOWN_LOCALITY = Locality()


class Change(enum.Enum):
    """What one check result did to readiness."""

    NONE = "none"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class CheckState:
    """Readiness of one endpoint as its checks have seen it."""

    ready: bool = False
    """Not ready until a check passes: exporting an unchecked endpoint as ready sends traffic to it blindly."""
    checked: bool = False
    """False until the first result; the first result decides at once (as Envoy does), thresholds after."""
    passes: int = 0
    """Consecutive passes."""
    fails: int = 0
    """Consecutive failures."""
    since: float = 0.0
    """When `ready` last changed (or the first result came)."""
    detail: str = ""
    """What the last check saw, for `meshfed status`."""


def observe(
    state: CheckState, passed: bool, detail: str, now: float, check: CheckSettings
) -> tuple[CheckState, Change]:
    """Apply one check result under the rise/fall thresholds; return the new state and what changed."""
    passes = state.passes + 1 if passed else 0
    fails = 0 if passed else state.fails + 1
    if not state.checked:
        ready = passed
    elif state.ready:
        ready = fails < check.fall
    else:
        ready = passes >= check.rise
    change = Change.NONE
    if ready != state.ready:
        change = Change.UP if ready else Change.DOWN
    since = now if change is not Change.NONE or not state.checked else state.since
    return CheckState(ready, True, passes, fails, since, detail), change


def check_port(service: VmServiceSettings) -> int:
    """The port a tcp or http check connects to: its own, or the first target port of the service."""
    if service.check.port:
        return service.check.port
    first = service.ports[0]
    return first.target_port or first.port


def convert(
    site: str,
    services: Iterable[VmServiceSettings],
    addresses: Mapping[ServiceId, str],
    states: Mapping[ServiceId, CheckState],
    locality: Locality = UNKNOWN_LOCALITY,
) -> list[ServiceExport]:
    """The export records of the declared services: one endpoint each, `ready` from its check state."""
    out = []
    for svc in services:
        key = (svc.namespace, svc.name)
        state = states.get(key, CheckState())
        ports = tuple(ServicePort(p.name, p.port, p.protocol) for p in svc.ports)
        targets = tuple(EndpointPort(p.name, p.target_port) for p in svc.ports if p.target_port)
        endpoint = Endpoint(
            addresses=(addresses[key],),
            ports=targets,
            ready=state.ready,
            hostname=svc.hostname,
            locality=locality,
            weight=svc.weight,
            labels=svc.labels,
        )
        out.append(ServiceExport(site, svc.namespace, svc.name, ports, svc.type, (endpoint,)))
    return out

