"""Partition behaviour: what the egress does with a new client while the registry view, or a site, is stale.

Each service's traffic policy says (`partition.mode`): `KeepServing` (the default) routes on the last known
endpoints however old; `StopAfter` does so for `partition.after`, then resets new clients until the
registry answers again; `FailClosed` resets them as soon as the view is stale. Established connections
are never cut. "Stale" is the agent's registry mirror's own measure (`meshfed_registry_staleness_seconds`:
seconds since etcd last answered its watch, 0 while it is healthy), handed in as `staleness`. While the
registry answers, one site can still be stale (its agent cut off from etcd: its heartbeat is overdue,
`site_staleness`): then that site alone is left out for such a service, as the same rule says.

`decide` is pure; `PartitionGate` is what the egress asks for each new client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from federation.core.policy.model import Partition, PartitionMode
from federation.core.view import MeshView
from federation.runtime.values import Readable
from gateway.enforcing import Policies
from gateway.refusals import Throttle
from gateway.relay import PlainLeg
from gateway.shedding import reset_transport

log = logging.getLogger(__name__)
_throttle = Throttle()


def decide(partition: Partition, stale_for: float) -> str | None:
    """Why a new client is refused with the registry view `stale_for` seconds old (0: live), or None. Pure."""
    if stale_for <= 0 or partition.mode is PartitionMode.KEEP_SERVING:
        return None
    if partition.mode is PartitionMode.FAIL_CLOSED:
        return "the registry view is stale (partition.mode FailClosed)"
    after = partition.after if partition.after is not None else 0.0
    if stale_for >= after:
        return f"the registry view is stale for over {after:g}s (partition.mode StopAfter)"
    return None


class PartitionGate:
    """Resets new clients of services whose partition behaviour says so while the registry view is stale."""

    def __init__(self, policies: Readable[Policies] | None, registry: CollectorRegistry,
                 mesh: Readable[MeshView] | None = None) -> None:
        self.policies = policies
        self.mesh = mesh
        self.staleness: Callable[[], float] = lambda: 0.0
        """Seconds the registry view is stale (0: live): the agent hands in its mirror's `staleness`."""
        self.site_staleness: Callable[[str], float] = lambda _site: 0.0
        """Seconds a site's records are stale (0: fresh): the agent hands in its lag meter's `stale_for`."""
        self.refused = Counter("meshfed_egress_partition_refused",
                               "New clients reset because the registry view is stale, by partition.mode",
                               ["mode"], registry=registry)
        for mode in (PartitionMode.STOP_AFTER, PartitionMode.FAIL_CLOSED):
            self.refused.labels(mode.value)

    def refuses(self, client: PlainLeg, key: tuple[str, str, str]) -> bool:
        """True (and the client reset, counted, logged once a minute per service) if it is refused now."""
        if self.policies is None:
            return False
        policy = self.policies.get().get((key[0], key[1]))
        if policy is None or policy.partition.mode is PartitionMode.KEEP_SERVING:
            return False
        why = decide(policy.partition, self.staleness())
        if why is None:
            return False
        self.refused.labels(policy.partition.mode.value).inc()
        _throttle.log(log, logging.WARNING, ("partition", key), "reset a client of %s/%s:%s: %s", *key, why)
        reset_transport(client.transport)
        return True

    def stale_sites(self, namespace: str, name: str) -> frozenset[str]:
        """The sites of `namespace/name` its partition behaviour leaves out now, their records being stale."""
        policy = self.policies.get().get((namespace, name)) if self.policies is not None else None
        svc = self.mesh.get().service(namespace, name) if self.mesh is not None and policy is not None else None
        if policy is None or svc is None or policy.partition.mode is PartitionMode.KEEP_SERVING:
            return frozenset()
        out = frozenset(s for s in svc.sites if decide(policy.partition, self.site_staleness(s)) is not None)
        for site in out:
            _throttle.log(log, logging.WARNING, ("stale-site", namespace, name, site),
                          "site %s is left out for %s/%s: its records are stale (partition.mode %s)", site,
                          namespace, name, policy.partition.mode.value)
        return out
