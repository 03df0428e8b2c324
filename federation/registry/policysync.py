"""Writing the policies a Kubernetes site declares (TrafficPolicy, AccessPolicy, MeshAccessPolicy objects) into
the registry.

The records written here are the site's: each carries the annotation `meshfed.io/owner: kubernetes/<site>`
in its metadata (signed with the rest; every reader's codec ignores annotations). The sync writes and deletes
only records it owns: a policy the registry already holds from `meshfed policy apply` (no owner) or from
another site is left alone and the object is refused with reason `Conflict`, and an owned record whose
object is gone is deleted (a signed tombstone for access policies, which a bare delete cannot remove).
With `registry.signatures: require` and no operator key, nothing is written: every object is refused with
reason `NotSigned`. The one MeshAccessPolicy of the mesh is owned the same way; when its object is gone the
record goes back to the defaults (Allow, closeOnDeny), signed and owned by no one, since readers keep a
MeshAccessPolicy that is merely deleted. `plan` is the pure core; `PolicyOwner` reads etcd, applies it and
says what happened.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from federation.core.codec import dump_json
from federation.core.errors import RecordError
from federation.core.keys import Keys
from federation.core.policy import access
from federation.core.policy.kinds import KINDS, PolicyKind, content
from federation.registry.etcd import Delete, EtcdClient, Put
from federation.registry.policies import Sign

OWNER = "meshfed.io/owner"
"""The metadata annotation naming who wrote a policy record (absent: `meshfed policy apply`)."""
Ident = tuple[str, str, str]
"""(kind, namespace, name) of a declared policy."""
Refusal = tuple[str, str]
"""(condition reason, message) of an object whose policy is not in the registry."""
Read = Callable[[str, bytes], bytes]
"""(key, stored value) -> the record without its signature (verified); RecordError if it is not valid."""
_TXN = 64


@dataclass(frozen=True, slots=True)
class Held:
    """What a stored record says about itself."""

    owner: str
    body: bytes
    """The record without signature and signer (what a declared record is compared with)."""
    tombstone: bool
    signed: bool


def plan(declared: Mapping[Ident, Any], stored: Mapping[str, bytes], keys: Keys, owner: str, *,
         sign: Sign | None, read: Read, mesh: bool = True) -> tuple[list[Put | Delete], dict[Ident, Refusal | None]]:
    """The writes that make the registry hold exactly the declared policies among the records `owner` owns,
    and for each declared policy None (in the registry) or why not; `mesh` False: the MeshAccessPolicy
    objects are not known (not yet listed), so the mesh record is left as it is."""
    held = {key: _held(key, value, read) for key, value in stored.items()}
    ops: list[Put | Delete] = []
    out: dict[Ident, Refusal | None] = {}
    wanted: set[str] = set()
    mesh_key = access.mesh_key(keys)
    for ident, policy in sorted(declared.items(), key=lambda kv: kv[0]):
        if ident[0] == access.MESH_KIND:
            key, what, fresh = mesh_key, "MeshAccessPolicy", access.encode(access.mesh_to_document(policy))
        else:
            kind = KINDS[ident[0]]
            key, fresh = kind.key(keys, ident[1], ident[2]), kind.record(policy)
            what = f"{kind.kind} for {ident[1]}/{ident[2]}"
        wanted.add(key)
        have = held.get(key)
        if have is not None and not have.tombstone and have.owner != owner:
            who = f"by {have.owner}" if have.owner else "with meshfed policy apply"
            out[ident] = ("Conflict", f"the registry holds a {what} written {who}; "
                                      "it is left in force (remove it there to let this object own it)")
            continue
        out[ident] = None
        record = _owned(fresh, owner)
        if have is not None and have.body == dump_json(record) and (sign is None or have.signed):
            continue
        ops.append(Put(key, sign(key, record) if sign is not None else dump_json(record)))
    for key, have in sorted(held.items()):
        if key in wanted or have is None or have.tombstone or have.owner != owner:
            continue
        if key == mesh_key and not mesh:
            continue
        if key == mesh_key:  # back to the defaults, owned by no one (a bare delete changes nothing in readers)
            defaults = access.encode(access.mesh_to_document(access.MeshAccess()))
            ops.append(Put(key, sign(key, defaults)) if sign is not None else Delete(key))
            continue
        found = _kind_of(key, keys)
        if found is None:
            continue
        if found.tombstone is not None and sign is not None:
            ns, name = found.parse_key(keys, key)
            ops.append(Put(key, sign(key, _owned(found.tombstone(ns, name), owner))))
        else:
            ops.append(Delete(key))
    return ops, out


class PolicyOwner:
    """Keeps the registry's policies equal to what a Kubernetes site declares, for the records it owns."""

    def __init__(self, client: EtcdClient, keys: Keys, site: str, *, sign: Sign | None, read: Read | None = None,
                 require: bool = True, signer_name: str = "") -> None:
        self._client = client
        self._keys = keys
        self.owner = f"kubernetes/{site}"
        self._sign = sign
        self._read = read or (lambda _key, value: content(value))
        self._require = require
        self._signer_name = signer_name
        self.writes = 0
        """Records written or deleted (tests and metrics)."""

    async def sync(self, declared: Mapping[Ident, Any], *, mesh: bool = True) -> dict[Ident, Refusal | None]:
        """Write what `declared` needs; for each declared policy None (in the registry) or (reason, message).
        `mesh`: see `plan`. RegistryUnavailable if etcd cannot be reached (nothing is known to be written)."""
        if self._require and self._sign is None:
            why = ("no operator key to sign it with (registry.signatures is require): set kubernetes.operator_key_dir "
                   "to a directory from `meshfed ca operator`, mounted from a Secret")
            return dict.fromkeys(declared, ("NotSigned", why))
        stored: dict[str, bytes] = {}
        for kind in KINDS.values():
            kvs, _ = await self._client.get_prefix(kind.prefix(self._keys))
            stored.update((k, kv.value) for k, kv in kvs.items())
        held = await self._client.get(access.mesh_key(self._keys))
        if held is not None:
            stored[access.mesh_key(self._keys)] = held.value
        ops, out = plan(declared, stored, self._keys, self.owner, sign=self._sign, read=self._read, mesh=mesh)
        for start in range(0, len(ops), _TXN):
            await self._client.commit(ops[start:start + _TXN])
        self.writes += len(ops)
        return out

    @property
    def signed_by(self) -> str:
        """Who signs what this writes ("" when unsigned)."""
        return self._signer_name if self._sign is not None else ""


def _owned(record: dict[str, Any], owner: str) -> dict[str, Any]:
    meta = dict(record.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), OWNER: owner}
    return {**record, "metadata": meta}


def _held(key: str, value: bytes, read: Read) -> Held | None:
    """What a stored record says, or None if it is not a valid record (then anyone may replace it)."""
    try:
        body = read(key, value)
        obj = json.loads(body)
    except (RecordError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    meta = obj.get("metadata")
    notes = meta.get("annotations") if isinstance(meta, dict) else None
    owner = notes.get(OWNER, "") if isinstance(notes, dict) else ""
    return Held(owner if isinstance(owner, str) else "", content(value), obj.get("deleted") is True,
                b'"sig":{' in value)


def _kind_of(key: str, keys: Keys) -> PolicyKind | None:
    return next((k for k in KINDS.values() if key.startswith(k.prefix(keys))), None)
