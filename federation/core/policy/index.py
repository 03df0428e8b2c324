"""The last valid policy per key, fed with etcd puts, deletes and listings. Pure.

A put that fails validation is rejected and counted, and the policy that was in force under that key
stays in force: a corrupt or newer-than-us record must not turn a service's policy back into defaults.
A delete removes the policy, unless deletes are protected (signed policies: a delete cannot be signed, so
a raw etcd writer could lift a Deny rule with one); then only a signed tombstone removes it. The reader
(registry/policies.py) logs what `Outcome.rejected` reports. One index type serves every kind of policy:
traffic policies by default, access policies with their own key parser and decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from federation.core.errors import RecordError
from federation.core.keys import Keys
from federation.core.policy.codec import decode_policy, parse_policy_key

ServiceId = tuple[str, str]
P = TypeVar("P")
Verify = Callable[[str, bytes], bytes]
"""(key, stored value) -> the record to decode (its signature checked and removed); RecordError if refused."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A stored value that failed validation, why, and whether an older valid policy stays in force."""

    key: str
    reason: str
    kept: Any


@dataclass(slots=True)
class Outcome:
    """What one put, delete or listing changed."""

    changed: dict[ServiceId, Any] = field(default_factory=dict)
    """Service -> its policy now (None: it has none any more)."""
    rejected: list[Rejected] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Keys deleted without a tombstone whose policy stays in force (protected deletes)."""


class PolicyIndex(Generic[P]):
    """Policies by service, from the records under one prefix (traffic policies unless told otherwise)."""

    def __init__(self, keys: Keys, *, parse_key: Callable[[Keys, str], ServiceId] = parse_policy_key,
                 decode: Callable[[ServiceId, bytes], P | None] = decode_policy,  # type: ignore[assignment]
                 verify: Verify | None = None, protect_deletes: bool = False) -> None:
        self._keys = keys
        self._parse_key = parse_key
        self._decode = decode
        self._verify = verify
        self._protect = protect_deletes
        self._raw: dict[str, bytes] = {}
        self._valid: dict[ServiceId, P] = {}
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
            service = self._parse_key(self._keys, key)
            record = self._verify(key, value) if self._verify is not None else value
            policy = self._decode(service, record)
        except RecordError as exc:
            self.rejections += 1
            self._bad[key] = str(exc)
            kept = self._kept(key)
            out.rejected.append(Rejected(key, str(exc), kept))
            return out
        self._bad.pop(key, None)
        if policy is None:  # a tombstone
            if self._valid.pop(service, None) is not None:
                out.changed[service] = None
        elif self._valid.get(service) != policy:
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
            service = self._parse_key(self._keys, key)
        except RecordError:
            return out
        if self._protect:
            if service in self._valid:
                out.kept.append(key)
            return out
        if self._valid.pop(service, None) is not None:
            out.changed[service] = None
        return out

    def resync(self, kvs: Mapping[str, bytes], revision: int) -> Outcome:
        """Take a fresh listing: keys gone are deleted, the rest applied as puts (bad ones keep the old)."""
        out = Outcome()
        for key in sorted(set(self._raw) - set(kvs)):
            sub = self.delete(key)
            out.changed.update(sub.changed)
            out.kept += sub.kept
        for key, value in sorted(kvs.items()):
            sub = self.put(key, value)
            out.changed.update(sub.changed)
            out.rejected += sub.rejected
        self.revision = revision
        return out

    def get(self, namespace: str, name: str) -> P | None:
        """The policy in force for `namespace/name`, or None (defaults apply)."""
        return self._valid.get((namespace, name))

    def policies(self) -> Mapping[ServiceId, P]:
        """Every policy in force, by service."""
        return MappingProxyType(self._valid)

    @property
    def rejected(self) -> Mapping[str, str]:
        """Keys whose stored value is invalid now, with the reason."""
        return MappingProxyType(self._bad)

    def _kept(self, key: str) -> P | None:
        try:
            return self._valid.get(self._parse_key(self._keys, key))
        except RecordError:
            return None
