"""The workload behind a client of this site's egress: its source address looked up in the site's index
(`federation.core.workloads`), which the site's source fills (Kubernetes pods, a VM's config)."""

from __future__ import annotations

from typing import Any

from federation.core.workloads import Workloads
from federation.runtime.values import Readable, Value

NO_WORKLOADS: Readable[Workloads] = Value(Workloads(), name="no workload identities")


def client_workload(workloads: Readable[Workloads], client: Any) -> str | None:
    """The workload behind an accepted client leg (its transport's peer address), or None (also for a client
    from outside the mesh, an ingress client: its address may equal a pod's of another network)."""
    if getattr(client, "outside", False):
        return None
    transport = getattr(client, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    return workloads.get().lookup(str(peer[0])) if peer else None
