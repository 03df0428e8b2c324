"""What the enforcer (`gateway.enforcing`) keeps: each service's shared state, and each admitted client.

A service's state lives while the mesh view has the service, policy or not: ejections, breaker counts and
the retry budget of a service without a TrafficPolicy are kept under the default rules the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses

from gateway.policy.breaker import Breaker
from gateway.policy.outlier import Outliers
from gateway.policy.retrying import Budget


@dataclasses.dataclass(slots=True)
class ServiceState:
    """What one service's connections share: ejections, breaker counts, the retry budget."""

    outliers: Outliers
    breaker: Breaker
    budget: Budget


@dataclasses.dataclass(slots=True)
class Admitted:
    """One admitted client: released once, when its connection is gone."""

    service: ServiceState
    identity: str | None = None
    """The client's workload SPIFFE ID, where known (for the access log)."""
    site: str | None = None
    timer: asyncio.TimerHandle | None = None
    released: bool = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.service.breaker.close()
        self.service.budget.closed()
        if self.site is not None:
            self.service.breaker.disconnected(self.site)
        if self.timer is not None:
            self.timer.cancel()
