"""Traffic policies in etcd: the store the CLI writes through, and the reader that keeps the last valid ones.

Every write goes through `PolicyStore._write`, the one place where a record will be signed (issue 13).
The reader lists once, watches from that revision, and resyncs on compaction or a broken stream; a
record that fails validation is logged (rate limited) and counted, and the policy in force stays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from federation.core.backoff import Backoff, registry_backoff
from federation.core.errors import RecordError, RegistryUnavailable
from federation.core.keys import Keys
from federation.core.policy.codec import decode_policy, encode_policy, parse_policy_key, policy_key, policy_prefix
from federation.core.policy.index import Outcome, PolicyIndex, ServiceId
from federation.core.policy.model import TrafficPolicy
from federation.core.ratelimit import LogLimiter
from federation.registry.etcd import Compacted, Delete, EtcdClient, Put, reconnecting
from federation.runtime.values import Value

log = logging.getLogger(__name__)

Policies = Mapping[ServiceId, TrafficPolicy]


@dataclass(frozen=True, slots=True)
class Stored:
    """What a key holds: a valid policy, or the reason it is not one (`policy` None)."""

    key: str
    policy: TrafficPolicy | None
    error: str = ""
    revision: int = 0


class PolicyStore:
    """Get, list, apply and delete traffic policies, validated both ways."""

    def __init__(self, client: EtcdClient, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    async def get(self, namespace: str, name: str) -> Stored | None:
        """The record of `namespace/name`, decoded; None if there is none."""
        key = policy_key(self._keys, namespace, name)
        kv = await self._client.get(key)
        return None if kv is None else _decoded(key, (namespace, name), kv.value, kv.mod_revision)

    async def list(self) -> list[Stored]:
        """Every record under the policy prefix, by key, invalid ones included (with their reason)."""
        kvs, _ = await self._client.get_prefix(policy_prefix(self._keys))
        out = []
        for key, kv in sorted(kvs.items()):
            try:
                service = parse_policy_key(self._keys, key)
            except RecordError as exc:
                out.append(Stored(key, None, str(exc), kv.mod_revision))
                continue
            out.append(_decoded(key, service, kv.value, kv.mod_revision))
        return out

    async def apply(self, policy: TrafficPolicy) -> bool:
        """Store `policy` (already validated); False if the stored record was the same already."""
        key = policy_key(self._keys, policy.namespace, policy.name)
        current = await self._client.get(key)
        value = encode_policy(policy)
        if current is not None and current.value == value:
            return False
        await self._write(key, policy)
        return True

    async def delete(self, namespace: str, name: str) -> bool:
        """Remove the policy of `namespace/name`; False if there was none."""
        key = policy_key(self._keys, namespace, name)
        if await self._client.get(key) is None:
            return False
        await self._write(key, None)
        return True

    async def _write(self, key: str, policy: TrafficPolicy | None) -> None:
        """The one write path: put the encoded policy, or delete it (None). Signing goes here (issue 13)."""
        op = Delete(key) if policy is None else Put(key, encode_policy(policy))
        await self._client.commit([op])


class PolicyReader:
    """A live index of the valid traffic policies, fed by etcd list and watch; `policies` follows it."""

    def __init__(self, client: EtcdClient, keys: Keys, *, backoff: Backoff | None = None,
                 log_interval: float = 60.0) -> None:
        self._client = client
        self._keys = keys
        self._backoff = backoff or registry_backoff()
        self._reject_log = LogLimiter(interval=log_interval, capacity=1024)
        self.index = PolicyIndex(keys)
        self.policies: Value[Policies] = Value(MappingProxyType({}), name="traffic policies")
        """The policies in force, replaced (never mutated) on every change."""
        self.synced = False

    async def refresh(self) -> Outcome:
        """List every policy once and take the listing (rejects logged); returns what changed."""
        kvs, revision = await self._client.get_prefix(policy_prefix(self._keys))
        outcome = self.index.resync({k: v.value for k, v in kvs.items()}, revision)
        self._report(outcome)
        if not self.synced:
            self.synced = True
            log.info("traffic policies: %d in force at revision %d", len(self.index.policies()), revision)
        return outcome

    async def run(self) -> None:
        """List, then watch from that revision, until cancelled; keeps its policies while etcd is away."""
        await reconnecting(self._client, self._session, self._on_error)

    async def _session(self) -> None:
        await self.refresh()
        self._backoff.reset()
        async for event in self._client.watch_prefix(policy_prefix(self._keys), self.index.revision + 1):
            if event.value is None:
                outcome = self.index.delete(event.key, event.revision)
            else:
                outcome = self.index.put(event.key, event.value, event.revision)
            self._report(outcome)
        raise RegistryUnavailable("policy watch stream ended")

    def _on_error(self, exc: RegistryUnavailable) -> float:
        delay = 0.0 if isinstance(exc, Compacted) else self._backoff.next()
        log.warning("traffic policies: %s; resyncing in %.1fs (keeping the policies in force)", exc, delay)
        return delay

    def _report(self, outcome: Outcome) -> None:
        now = time.monotonic()
        for rej in outcome.rejected:
            if self._reject_log.allow(rej.key, now):
                kept = "the previous policy stays in force" if rej.kept is not None else "defaults apply"
                log.warning("traffic policies: skipped %s: %s (%s)", rej.key, rej.reason, kept)
        if outcome.changed:
            self.policies.set(MappingProxyType(dict(self.index.policies())))


def _decoded(key: str, service: ServiceId, value: bytes, revision: int) -> Stored:
    try:
        return Stored(key, decode_policy(service, value), revision=revision)
    except RecordError as exc:
        return Stored(key, None, str(exc), revision)
