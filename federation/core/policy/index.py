"""The last valid policy per key, fed with etcd puts, deletes and listings. Pure.

A put that fails validation is rejected and counted, and the policy that was in force under that key
stays in force: a corrupt or newer-than-us record must not turn a service's policy back into defaults.
A delete removes the policy. The reader (registry/policies.py) logs what `Outcome.rejected` reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from federation.core.errors import RecordError
from federation.core.keys import Keys
from federation.core.policy.codec import decode_policy, parse_policy_key
from federation.core.policy.model import TrafficPolicy

ServiceId = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A stored value that failed validation, why, and whether an older valid policy stays in force."""

    key: str
    reason: str
    kept: TrafficPolicy | None


@dataclass(slots=True)
class Outcome:
    """What one put, delete or listing changed."""

    changed: dict[ServiceId, TrafficPolicy | None] = field(default_factory=dict)
    """Service -> its policy now (None: it has none any more)."""
    rejected: list[Rejected] = field(default_factory=list)


class PolicyIndex:
    """Traffic policies by service, from the records under `policy_prefix(keys)`."""

    def __init__(self, keys: Keys) -> None:
        self._keys = keys
        self._raw: dict[str, bytes] = {}
        self._valid: dict[ServiceId, TrafficPolicy] = {}
        self._bad: dict[str, str] = {}
        self.rejections = 0
        """Rejected puts since start (a metric)."""
        self.revision = 0

    def put(self, key: str, value: bytes, revision: int = 0) -> Outcome:
        """Apply a put of `key`."""
        out = Outcome()
        self.revision = max(self.revision, revision)
        if self._raw.get(key) == value:
            return out
        self._raw[key] = value
        try:
            service = parse_policy_key(self._keys, key)
            policy = decode_policy(service, value)
        except RecordError as exc:
            self.rejections += 1
            self._bad[key] = str(exc)
            kept = self._kept(key)
            out.rejected.append(Rejected(key, str(exc), kept))
            return out
        self._bad.pop(key, None)
        if self._valid.get(service) != policy:
            self._valid[service] = policy
            out.changed[service] = policy
        return out

    def delete(self, key: str, revision: int = 0) -> Outcome:
        """Apply a delete of `key`: its policy (valid or kept) is gone."""
        out = Outcome()
        self.revision = max(self.revision, revision)
        self._raw.pop(key, None)
        self._bad.pop(key, None)
        try:
            service = parse_policy_key(self._keys, key)
        except RecordError:
            return out
        if self._valid.pop(service, None) is not None:
            out.changed[service] = None
        return out

    def resync(self, kvs: Mapping[str, bytes], revision: int) -> Outcome:
        """Take a fresh listing: keys gone are deleted, the rest applied as puts (bad ones keep the old)."""
        out = Outcome()
        for key in sorted(set(self._raw) - set(kvs)):
            out.changed.update(self.delete(key).changed)
        for key, value in sorted(kvs.items()):
            sub = self.put(key, value)
            out.changed.update(sub.changed)
            out.rejected += sub.rejected
        self.revision = revision
        return out

    def get(self, namespace: str, name: str) -> TrafficPolicy | None:
        """The policy in force for `namespace/name`, or None (defaults apply)."""
        return self._valid.get((namespace, name))

    def policies(self) -> Mapping[ServiceId, TrafficPolicy]:
        """Every policy in force, by service."""
        return MappingProxyType(self._valid)

    @property
    def rejected(self) -> Mapping[str, str]:
        """Keys whose stored value is invalid now, with the reason."""
        return MappingProxyType(self._bad)

    def _kept(self, key: str) -> TrafficPolicy | None:
        try:
            return self._valid.get(parse_policy_key(self._keys, key))
        except RecordError:
            return None
