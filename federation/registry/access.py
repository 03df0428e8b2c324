"""The access control state an agent enforces: AccessPolicies, the MeshAccessPolicy and the revoked sites.

`AccessReader` lists and watches `<prefix>/mesh/policies/` (the access policies and the mesh document;
traffic policies beside them are someone else's) and keeps `state`, an immutable `AccessState` the
gateway and the egress read on every stream. Records are verified (operator-signed) with the agent's
verifier; a record that fails is logged and counted and what was in force stays, deletes included when
records are signed (a delete cannot be signed: only a signed tombstone removes a policy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import MappingProxyType

from federation.core.backoff import Backoff, registry_backoff
from federation.core.errors import RecordError, RegistryUnavailable
from federation.core.keys import Keys
from federation.core.meshdocs import Revocations
from federation.core.policy import access
from federation.core.policy.access import AccessState, MeshAccess
from federation.core.policy.index import Outcome, PolicyIndex, Verify
from federation.core.policy.kinds import ACCESS, content
from federation.core.ratelimit import LogLimiter
from federation.registry.etcd import Compacted, EtcdClient, reconnecting
from federation.runtime.values import Derived, Readable, Value

log = logging.getLogger(__name__)


class AccessReader:
    """A live `AccessState`, fed by etcd list and watch (and by the revocation list, when given)."""

    def __init__(self, client: EtcdClient, keys: Keys, *, verify: Verify | None = None,
                 revocations: Readable[Revocations] | None = None, protect_deletes: bool = False,
                 backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._keys = keys
        self._verify: Verify = verify or (lambda _k, v: content(v))
        self._protect = protect_deletes
        self._backoff = backoff or registry_backoff()
        self._clock = clock
        self._log = LogLimiter(interval=60.0, capacity=1024)
        self._prefix = keys.mesh("policies") + "/"
        self._mesh_key = access.mesh_key(keys)
        self.index: PolicyIndex[access.AccessPolicy] = PolicyIndex(
            keys, parse_key=ACCESS.parse_key, decode=ACCESS.decode, verify=self._verify,
            protect_deletes=self._protect)
        self._mesh = MeshAccess()
        self._mesh_raw: bytes | None = None
        self._revocations = revocations
        self.revision = 0
        self.rejections = 0
        self.policies: Value[AccessState] = Value(AccessState(), name="access policies")
        """The policies and the mesh default in force (revocations not included)."""
        revoked: Readable[Revocations] = revocations or Value(Revocations(), name="no revocations")
        policies = self.policies
        self.state: Readable[AccessState] = Derived(
            lambda: AccessState(policies.get().policies, policies.get().mesh, frozenset(revoked.get().sites)),
            policies, revoked, name="access state")
        """What enforcement reads: policies, mesh default and revoked sites, as one snapshot."""
        self.synced = False

    async def run(self) -> None:
        """List, then watch from that revision, until cancelled; keeps what is in force while etcd is away."""
        await reconnecting(self._client, self._session, self._on_error)

    async def refresh(self) -> None:
        """List once and take the listing."""
        kvs, revision = await self._client.get_prefix(self._prefix)
        values = {k: v.value for k, v in kvs.items()}
        out = self.index.resync({k: v for k, v in values.items() if k.startswith(access.prefix(self._keys))},
                                revision)
        changed = self._put_mesh(values.get(self._mesh_key))
        self.revision = revision
        self._report(out, changed)
        if not self.synced:
            self.synced = True
            log.info("access policies: %d in force, mesh default %s", len(self.index.policies()),
                     self._mesh.default_action.value)

    async def _session(self) -> None:
        await self.refresh()
        self._backoff.reset()
        head = access.prefix(self._keys)
        async for event in self._client.watch_prefix(self._prefix, self.revision + 1):
            self.revision = event.revision
            if event.key == self._mesh_key:
                self._report(Outcome(), self._put_mesh(event.value))
            elif event.key.startswith(head):
                out = (self.index.delete(event.key, event.revision) if event.value is None
                       else self.index.put(event.key, event.value, event.revision))
                self._report(out, False)
        raise RegistryUnavailable("access policy watch stream ended")

    def _on_error(self, exc: RegistryUnavailable) -> float:
        delay = 0.0 if isinstance(exc, Compacted) else self._backoff.next()
        log.warning("access policies: %s; resyncing in %.1fs (keeping the policies in force)", exc, delay)
        return delay

    def _put_mesh(self, value: bytes | None) -> bool:
        """Take the MeshAccessPolicy (None: deleted); True if what is in force changed."""
        if value == self._mesh_raw:
            return False
        self._mesh_raw = value
        if value is None:
            if self._protect:
                if self._log.allow(("kept", self._mesh_key), self._clock()):
                    log.warning("access policies: %s was deleted without a signed record; keeping "
                                "defaultAction %s", self._mesh_key, self._mesh.default_action.value)
                return False
            new = MeshAccess()
        else:
            try:
                new = access.decode_mesh(self._verify(self._mesh_key, value))
            except RecordError as exc:
                self.rejections += 1
                if self._log.allow(self._mesh_key, self._clock()):
                    log.warning("access policies: skipped %s: %s (keeping defaultAction %s)", self._mesh_key, exc,
                                self._mesh.default_action.value)
                return False
        if new == self._mesh:
            return False
        self._mesh = new
        return True

    def _report(self, out: Outcome, mesh_changed: bool) -> None:
        now = self._clock()
        for rej in out.rejected:
            self.rejections += 1
            if self._log.allow(rej.key, now):
                kept = "the previous policy stays in force" if rej.kept is not None else "the mesh default applies"
                log.warning("access policies: skipped %s: %s (%s)", rej.key, rej.reason, kept)
        for key in out.kept:
            if self._log.allow(("kept", key), now):
                log.warning("access policies: %s was deleted without a signed tombstone; it stays in force "
                            "(delete it with `meshfed policy delete --operator`)", key)
        if out.changed or mesh_changed:
            self.policies.set(AccessState(MappingProxyType(dict(self.index.policies())), self._mesh))
            for service, policy in sorted(out.changed.items()):
                log.info("access policy of %s/%s %s", *service, "removed" if policy is None else "in force")

