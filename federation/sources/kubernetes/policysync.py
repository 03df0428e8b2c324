"""The policy sync of a Kubernetes site: TrafficPolicy, AccessPolicy and MeshAccessPolicy objects into the registry,
and back an `Accepted` condition on each object (`kubectl get tp,ap,meshaccesspolicy` shows it).

Three reflectors keep the objects; after both have listed (nothing is written or deleted before: HasSynced), each
change (and every `resync`) converts every object with the codecs `meshfed policy apply` uses
(`policies.convert_policy`), hands the valid ones to the writer, which writes the registry records this site
owns (`federation/registry/policysync.py`, injected: sources do not import the registry), and writes each
object's condition where it changed: True, or False with `Invalid` (the field and the reason), `NotSigned`
or `Conflict` and a message. An unreachable registry leaves the conditions as they are and is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from federation.core.backoff import Backoff
from federation.core.errors import MeshfedError, PolicyError
from federation.core.policy.access import KIND as ACCESS_KIND
from federation.core.policy.access import MESH_KIND
from federation.core.policy.model import KIND as TRAFFIC_KIND
from federation.core.ratelimit import LogLimiter
from federation.sources.kubernetes.client import ApiError, ApiUnavailable, KubeClient
from federation.sources.kubernetes.policies import convert_policy, policy_conditions
from federation.sources.kubernetes.settings import KubernetesSettings
from federation.sources.kubernetes.watching import Reflector, WatchMetrics

log = logging.getLogger(__name__)

RESOURCES = {"trafficpolicies": TRAFFIC_KIND, "accesspolicies": ACCESS_KIND, "meshaccesspolicies": MESH_KIND}
"""The watched resources and the kind of policy each holds."""
_MESH = "meshaccesspolicies"
Ident = tuple[str, str, str]
"""(kind, namespace, name)"""


class PolicyWriter(Protocol):
    """What writes the declared policies to the registry (federation.registry.policysync.PolicyOwner)."""

    async def sync(self, declared: Mapping[Ident, Any], *, mesh: bool = True
                   ) -> Mapping[Ident, tuple[str, str] | None]:
        """Write them; per policy None (in the registry) or (reason, message). `mesh`: whether the
        MeshAccessPolicy objects are known (else the mesh record is left as it is)."""
        ...

    @property
    def signed_by(self) -> str:
        """Who signs the records ("" when unsigned)."""
        ...


class PolicySync:
    """Syncs this cluster's policy objects into the registry and reports the outcome on each object."""

    def __init__(self, client: KubeClient, writer: PolicyWriter, settings: KubernetesSettings, *,
                 metrics: WatchMetrics, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._writer = writer
        self._settings = settings
        self._clock = clock
        self._wake = asyncio.Event()
        self._limiter = LogLimiter()
        self.reflectors = {r: Reflector(client, r, self._wake.set, metrics=metrics, backoff=self._backoff(),
                                        watch_timeout=settings.watch_timeout) for r in RESOURCES}
        self.passes = 0
        """Completed sync passes (tests)."""

    async def run(self) -> None:
        """Watch and sync until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for r, reflector in self.reflectors.items():
                tg.create_task(reflector.run(), name=f"kubernetes-watch-{r}")
            tg.create_task(self._loop(), name="kubernetes-policy-sync")

    async def reconcile(self) -> None:
        """One pass: convert every object, write the valid ones, update the conditions that changed."""
        declared: dict[Ident, Any] = {}
        invalid: dict[Ident, str] = {}
        # The MeshAccessPolicy objects count only once listed: an agent whose ClusterRole predates them (or a
        # cluster without their CRD) syncs the other kinds meanwhile, and leaves the mesh record alone.
        mesh = self.reflectors[_MESH].synced.is_set()
        # The objects as they are now: ones that arrive while the registry is written wait for the next pass.
        seen = {r: list(self.reflectors[r].store.items()) if r != _MESH or mesh else [] for r in RESOURCES}
        for resource, kind in RESOURCES.items():
            for (ns, name), obj in seen[resource]:
                try:
                    declared[(kind, ns, name)] = convert_policy(obj)
                except PolicyError as exc:
                    invalid[(kind, ns, name)] = str(exc)
        results = await self._writer.sync(declared, mesh=mesh)
        signer = self._writer.signed_by
        accepted = f"in the registry, signed by operator key {signer}" if signer else "in the registry (unsigned)"
        now = self._clock()
        for resource, kind in RESOURCES.items():
            for (ns, name), obj in seen[resource]:
                ident = (kind, ns, name)
                refusal = ("Invalid", invalid[ident]) if ident in invalid else results.get(ident)
                meta, status = obj.get("metadata") or {}, obj.get("status") or {}
                previous = status.get("conditions") or []
                generation = int(meta.get("generation") or 0)
                conditions = policy_conditions(previous, refusal[1] if refusal else None, now, generation,
                                               reason=refusal[0] if refusal else "Invalid", accepted=accepted)
                if _same(previous, conditions):
                    continue
                if refusal is not None and self._limiter.allow((ident, refusal[0]), time.monotonic()):
                    log.warning("kubernetes: %s %s/%s not synced (%s): %s", kind, ns, name, *refusal)
                await self._set_status(resource, obj, conditions)
        self.passes += 1

    # -- private

    async def _loop(self) -> None:
        await asyncio.gather(*(r.synced.wait() for k, r in self.reflectors.items() if k != _MESH))
        retry = self._backoff()
        while True:
            try:
                await self.reconcile()
                retry.reset()
                delay = self._settings.resync
            except (MeshfedError, ApiUnavailable) as exc:  # RegistryUnavailable, API errors: try again
                delay = retry.next()
                log.warning("kubernetes: policy sync failed (%s); retrying in %.1fs", exc, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: gh-86296
                    await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._settings.reconcile_delay)  # batch a burst of events

    async def _set_status(self, resource: str, obj: dict[str, Any], conditions: list[dict[str, Any]]) -> None:
        meta = obj.get("metadata") or {}
        try:
            updated = await self._client.patch(resource, str(meta.get("namespace", "")), str(meta.get("name", "")),
                                               {"status": {"conditions": conditions}}, subresource="status")
        except ApiError as exc:
            if exc.code == 404:
                return  # deleted meanwhile (or, for MeshAccessPolicy, a cluster without its CRD: nothing to report)
            raise
        self.reflectors[resource].apply(updated)

    def _backoff(self) -> Backoff:
        return Backoff(base=self._settings.backoff_base, cap=self._settings.backoff_cap)


def _same(a: list[Any], b: list[dict[str, Any]]) -> bool:
    fields = ("type", "status", "reason", "message", "observedGeneration")
    return [tuple(c.get(f) for f in fields) for c in a if isinstance(c, dict)] == [tuple(c.get(f) for f in fields)
                                                                                   for c in b]
