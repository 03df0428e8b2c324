"""Mesh policies in etcd: the store the CLI writes through, and the reader that keeps the last valid ones.

Both serve every kind of policy (`core.policy.kinds`: traffic, access). Every write goes through
`PolicyStore._write`, the one place where a record is signed (with the operator key the CLI was given).
The reader lists once, watches from that revision, and resyncs on compaction or a broken stream; a
record that fails validation (or verification) is logged (rate limited) and counted, and the policy in
force stays. With `protect_deletes` a bare delete leaves the policy in force: only a signed tombstone
removes it, as a raw etcd writer can delete anything but sign nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from federation.core.backoff import Backoff, registry_backoff
from federation.core.codec import dump_json
from federation.core.errors import RecordError, RegistryUnavailable
from federation.core.keys import Keys
from federation.core.policy.index import Outcome, PolicyIndex, ServiceId, Verify
from federation.core.policy.kinds import TRAFFIC, PolicyKind, content
from federation.core.ratelimit import LogLimiter
from federation.registry.etcd import Compacted, Delete, EtcdClient, Put, reconnecting
from federation.runtime.values import Value

log = logging.getLogger(__name__)

Policies = Mapping[ServiceId, Any]
Sign = Callable[[str, dict[str, Any]], bytes]
"""(key, record) -> the stored value, signed by the operator (the CLI builds it from the operator key)."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What a key holds: a valid policy, or the reason it is not one (`policy` None)."""

    key: str
    policy: Any
    error: str = ""
    revision: int = 0
    signed: bool = False
    deleted: bool = False
    """A tombstone: the policy was deleted with a signed record."""


class PolicyStore:
    """Get, list, apply and delete policies of one kind, validated both ways, signed when given a signer."""

    def __init__(self, client: EtcdClient, keys: Keys, kind: PolicyKind = TRAFFIC, *, sign: Sign | None = None,
                 verify: Verify | None = None) -> None:
        self.client = client
        self.keys = keys
        self._client = client
        self._keys = keys
        self.kind = kind
        self._sign = sign
        self._verify = verify

    async def get(self, namespace: str, name: str) -> Stored | None:
        """The record of `namespace/name`, decoded; None if there is none (or a tombstone)."""
        key = self.kind.key(self._keys, namespace, name)
        kv = await self._client.get(key)
        stored = None if kv is None else self._decoded(key, (namespace, name), kv.value, kv.mod_revision)
        return None if stored is None or stored.deleted else stored

    async def list(self) -> list[Stored]:
        """Every record under the policy prefix, by key, invalid ones included (with their reason)."""
        kvs, _ = await self._client.get_prefix(self.kind.prefix(self._keys))
        out = []
        for key, kv in sorted(kvs.items()):
            try:
                service = self.kind.parse_key(self._keys, key)
            except RecordError as exc:
                out.append(Stored(key, None, str(exc), kv.mod_revision))
                continue
            stored = self._decoded(key, service, kv.value, kv.mod_revision)
            if not stored.deleted:
                out.append(stored)
        return out

    async def apply(self, policy: Any) -> bool:
        """Store `policy` (already validated); False if the stored record was the same already (and signed
        alike: applying with a signer signs a policy stored unsigned)."""
        key = self.kind.key(self._keys, *self.kind.identity(policy))
        current = await self._client.get(key)
        record = self.kind.record(policy)
        if current is not None and _same(current.value, record, signed=self._sign is not None):
            return False
        await self._write(key, record)
        return True

    async def delete(self, namespace: str, name: str) -> bool:
        """Remove the policy of `namespace/name` (a signed tombstone where the kind has one and a signer was
        given, else a delete); False if there was none."""
        key = self.kind.key(self._keys, namespace, name)
        if await self.get(namespace, name) is None:
            return False
        tomb = self.kind.tombstone
        await self._write(key, tomb(namespace, name) if tomb is not None and self._sign is not None else None)
        return True

    async def _write(self, key: str, record: dict[str, Any] | None) -> None:
        """The one write path: put the record (signed when a signer was given), or delete the key (None)."""
        if record is None:
            op: Put | Delete = Delete(key)
        else:
            op = Put(key, self._sign(key, record) if self._sign is not None else dump_json(record))
        await self._client.commit([op])

    def _decoded(self, key: str, service: ServiceId, value: bytes, revision: int) -> Stored:
        signed = b'"sig":{' in value
        try:
            record = self._verify(key, value) if self._verify is not None else content(value)
            policy = self.kind.decode(service, record)
        except RecordError as exc:
            return Stored(key, None, str(exc), revision, signed)
        return Stored(key, policy, revision=revision, signed=signed, deleted=policy is None)


class PolicyReader:
    """A live index of the valid policies of one kind, fed by etcd list and watch; `policies` follows it."""

    def __init__(self, client: EtcdClient, keys: Keys, *, backoff: Backoff | None = None,
                 log_interval: float = 60.0, kind: PolicyKind = TRAFFIC, verify: Verify | None = None,
                 protect_deletes: bool = False) -> None:
        self._client = client
        self._keys = keys
        self.kind = kind
        self._backoff = backoff or registry_backoff()
        self._reject_log = LogLimiter(interval=log_interval, capacity=1024)
        self.index: PolicyIndex[Any] = PolicyIndex(keys, parse_key=kind.parse_key, decode=kind.decode,
                                                   verify=verify or (lambda _k, v: content(v)),
                                                   protect_deletes=protect_deletes)
        self.policies: Value[Policies] = Value(MappingProxyType({}), name=f"{kind.kind} policies")
        """The policies in force, replaced (never mutated) on every change."""
        self.synced = False

    async def refresh(self) -> Outcome:
        """List every policy once and take the listing (rejects logged); returns what changed."""
        kvs, revision = await self._client.get_prefix(self.kind.prefix(self._keys))
        outcome = self.index.resync({k: v.value for k, v in kvs.items()}, revision)
        self._report(outcome)
        if not self.synced:
            self.synced = True
            log.info("%s: %d in force at revision %d", self.kind.kind, len(self.index.policies()), revision)
        return outcome

    async def run(self) -> None:
        """List, then watch from that revision, until cancelled; keeps its policies while etcd is away."""
        await reconnecting(self._client, self._session, self._on_error)

    async def _session(self) -> None:
        await self.refresh()
        self._backoff.reset()
        async for event in self._client.watch_prefix(self.kind.prefix(self._keys), self.index.revision + 1):
            if event.value is None:
                outcome = self.index.delete(event.key, event.revision)
            else:
                outcome = self.index.put(event.key, event.value, event.revision)
            self._report(outcome)
        raise RegistryUnavailable("policy watch stream ended")

    def _on_error(self, exc: RegistryUnavailable) -> float:
        delay = 0.0 if isinstance(exc, Compacted) else self._backoff.next()
        log.warning("%s: %s; resyncing in %.1fs (keeping the policies in force)", self.kind.kind, exc, delay)
        return delay

    def _report(self, outcome: Outcome) -> None:
        now = time.monotonic()
        for rej in outcome.rejected:
            if self._reject_log.allow(rej.key, now):
                kept = "the previous policy stays in force" if rej.kept is not None else "defaults apply"
                log.warning("%s: skipped %s: %s (%s)", self.kind.kind, rej.key, rej.reason, kept)
        for key in outcome.kept:
            if self._reject_log.allow(("kept", key), now):
                log.warning("%s: %s was deleted without a signed tombstone; the policy stays in force "
                            "(delete it with `meshfed policy delete --operator`)", self.kind.kind, key)
        if outcome.changed:
            self.policies.set(MappingProxyType(dict(self.index.policies())))


class PolicyMetrics:
    """A reader's counts as Prometheus series (a collector: read at scrape time, nothing to keep in step)."""

    def __init__(self, reader: PolicyReader) -> None:
        self._reader = reader

    def collect(self) -> list[Metric]:
        kind = self._reader.kind.kind
        rejected = CounterMetricFamily(
            "meshfed_policy_records_rejected", "Policy records skipped because they failed validation or "
            "verification (the policy in force before stays)", labels=["kind"])
        rejected.add_metric([kind], self._reader.index.rejections)
        in_force = GaugeMetricFamily("meshfed_policies", "Policies in force", labels=["kind"])
        in_force.add_metric([kind], len(self._reader.policies.get()))
        return [rejected, in_force]


def _same(stored: bytes, record: dict[str, Any], signed: bool) -> bool:
    """Whether the stored value already holds `record` (signed, when a signed one is wanted)."""
    try:
        same = content(stored) == dump_json(record)
    except RecordError:
        return False
    # Applying with a signer signs a policy stored unsigned; applying without one never strips a signature.
    return same and (not signed or b'"sig":{' in stored)
