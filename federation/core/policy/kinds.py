"""The kinds of mesh policy and how each is stored: key layout, record, decoder, tombstone. Pure.

`meshfed policy apply|get|ls|delete` and the readers handle every kind through this one description.
A stored record may carry an operator's signature (`sig`) and certificate (`signer`): `content` takes
them off for the codec, which knows neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from federation.core import envelope
from federation.core.codec import dump_json
from federation.core.errors import RecordError
from federation.core.keys import Keys
from federation.core.policy import access
from federation.core.policy import codec as traffic
from federation.core.policy.model import TrafficPolicy

ServiceId = tuple[str, str]
SIGNER = "signer"


@dataclass(frozen=True, slots=True)
class PolicyKind:
    """One kind of per-service policy."""

    kind: str
    """The document's `kind`."""
    prefix: Callable[[Keys], str]
    key: Callable[[Keys, str, str], str]
    parse_key: Callable[[Keys, str], ServiceId]
    record: Callable[[Any], dict[str, Any]]
    """policy -> the stored record (canonical once dumped), to be signed."""
    decode: Callable[[ServiceId, bytes], Any]
    """stored record (without signature) -> policy, or None for a tombstone."""
    document: Callable[[Any], dict[str, Any]]
    """policy -> the full document an operator reads (`policy get`)."""
    tombstone: Callable[[str, str], dict[str, Any]] | None = None
    """The record that removes a policy where a delete must be signed (None: deletes remove it)."""

    def identity(self, policy: Any) -> ServiceId:
        """The service a policy governs."""
        return (policy.namespace, policy.name)


TRAFFIC = PolicyKind(
    kind="TrafficPolicy", prefix=traffic.policy_prefix, key=traffic.policy_key, parse_key=traffic.parse_policy_key,
    record=lambda p: {"schema": traffic.SCHEMA, **traffic.to_document(p)}, decode=traffic.decode_policy,
    document=traffic.to_document,
)  # fmt: skip
ACCESS = PolicyKind(
    kind=access.KIND, prefix=access.prefix, key=access.key_of, parse_key=access.parse_key,
    record=lambda p: access.encode(access.to_document(p)), decode=access.decode, document=access.to_document,
    tombstone=access.tombstone,
)  # fmt: skip
KINDS = {k.kind: k for k in (TRAFFIC, ACCESS)}


def kind_of(policy: Any) -> PolicyKind:
    """The kind of a policy object."""
    return TRAFFIC if isinstance(policy, TrafficPolicy) else ACCESS


def content(value: bytes) -> bytes:
    """A stored record as its codec reads it: without the signature and the signer's certificate (unchecked)."""
    split = envelope.split(value)
    if split.signature is None and b'"signer"' not in value:
        return value
    try:
        obj = json.loads(split.body)
    except ValueError:
        raise RecordError("value is not JSON") from None
    if isinstance(obj, dict):
        obj.pop(SIGNER, None)
    return dump_json(obj)
