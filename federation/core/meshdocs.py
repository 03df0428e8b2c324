"""Mesh-wide documents that decide whom every reader trusts: the trust bundle and the revocation list. Pure.

Each is one record with a `sequence` that only grows. A reader takes a document only if it is signed
(the trust bundle by a root it already trusts, revocations by an operator) and newer than the one it
holds; it keeps the document across restarts, and a deleted key changes nothing: a writer with raw etcd
access can neither roll the mesh back to an old root nor lift a revocation by deleting or replaying it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.core.codec import load_record
from federation.core.errors import RecordError
from federation.core.keys import Keys
from federation.core.records import check_label

SCHEMA = 1
TRUST_KIND = "TrustBundle"
REVOCATIONS_KIND = "Revocations"
MAX_ROOTS = 8
MAX_REVOKED = 10_000


def trust_key(keys: Keys) -> str:
    """Where the mesh's trust bundle document lives."""
    return keys.mesh("trust", "bundle")


def revocations_key(keys: Keys) -> str:
    """Where the mesh's revocation list lives."""
    return keys.mesh("revocations")


@dataclass(frozen=True, slots=True)
class TrustDocument:
    """The roots every agent trusts, for one trust domain (SPIFFE: never mix trust domains)."""

    trust_domain: str
    roots: tuple[str, ...]
    """PEM certificates of the roots, oldest first."""
    sequence: int
    """Grows with every change; a reader takes only a document newer than its own."""


@dataclass(frozen=True, slots=True)
class Revoked:
    """One revoked site: why, and when the operator revoked it (seconds since the epoch)."""

    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Revocations:
    """The sites the operator has cut off: readers drop their records, gateways refuse their certificates; and the
    operator keys revoked: nothing they sign is taken any more."""

    sites: Mapping[str, Revoked] = field(default_factory=dict)
    sequence: int = 0
    operators: Mapping[str, Revoked] = field(default_factory=dict)
    """Key id (as signatures name it) -> why and when it was revoked."""

    def revoke(self, site: str, reason: str, at: float) -> Revocations:
        """The list with `site` revoked (a new sequence)."""
        check_label("site", site)
        return Revocations({**self.sites, site: Revoked(reason, at)}, self.sequence + 1, self.operators)

    def restore(self, site: str) -> Revocations:
        """The list with `site` no longer revoked (a new sequence)."""
        return Revocations({k: v for k, v in self.sites.items() if k != site}, self.sequence + 1, self.operators)

    def revoke_operator(self, kid: str, reason: str, at: float) -> Revocations:
        """The list with the operator key `kid` revoked (a new sequence); it cannot be restored."""
        _check_kid(kid)
        return Revocations(self.sites, self.sequence + 1, {**self.operators, kid: Revoked(reason, at)})


def trust_body(doc: TrustDocument) -> dict[str, Any]:
    """The record of a trust bundle document (to be signed)."""
    return {"schema": SCHEMA, "kind": TRUST_KIND, "trustDomain": doc.trust_domain, "roots": list(doc.roots),
            "sequence": doc.sequence}


def decode_trust(data: bytes) -> TrustDocument:
    """Validate and decode a trust bundle document (its signature is checked elsewhere)."""
    obj = load_record(data, TRUST_KIND, SCHEMA)
    roots = obj.get("roots")
    if not isinstance(roots, list) or not roots or not all(isinstance(r, str) for r in roots):
        raise RecordError("roots is not a non-empty list of PEM certificates")
    if len(roots) > MAX_ROOTS:
        raise RecordError(f"roots has {len(roots)} entries; at most {MAX_ROOTS}")
    td = obj.get("trustDomain")
    if not isinstance(td, str) or not td:
        raise RecordError("trustDomain is missing")
    return TrustDocument(td, tuple(roots), _sequence(obj))


def revocations_body(doc: Revocations, signer_pem: str) -> dict[str, Any]:
    """The record of a revocation list (to be signed by the operator whose certificate is `signer_pem`)."""
    body = {"schema": SCHEMA, "kind": REVOCATIONS_KIND, "sequence": doc.sequence, "signer": signer_pem,
            "sites": {k: {"reason": v.reason, "at": v.at} for k, v in sorted(doc.sites.items())}}
    if doc.operators:  # absent when empty: the list reads the same to agents that know no operator revocations
        body["operators"] = {k: {"reason": v.reason, "at": v.at} for k, v in sorted(doc.operators.items())}
    return body


def decode_revocations(data: bytes) -> Revocations:
    """Validate and decode a revocation list (its signature is checked elsewhere)."""
    obj = load_record(data, REVOCATIONS_KIND, SCHEMA)
    raw = obj.get("sites")
    if not isinstance(raw, dict) or len(raw) > MAX_REVOKED:
        raise RecordError(f"sites is not a mapping of at most {MAX_REVOKED} sites")
    ops = obj.get("operators", {})
    if not isinstance(ops, dict) or len(ops) > MAX_REVOKED:
        raise RecordError(f"operators is not a mapping of at most {MAX_REVOKED} key ids")
    return Revocations(_entries("sites", raw, lambda name: check_label("sites", name)), _sequence(obj),
                       _entries("operators", ops, _check_kid))


def _entries(field_: str, raw: dict[str, Any], check: Callable[[str], None]) -> dict[str, Revoked]:
    out: dict[str, Revoked] = {}
    for name, entry in raw.items():
        check(name)
        if not isinstance(entry, dict):
            raise RecordError(f"{field_}.{name} is not an object")
        reason, at = entry.get("reason", ""), entry.get("at", 0)
        if not isinstance(reason, str) or not isinstance(at, int | float) or isinstance(at, bool):
            raise RecordError(f"{field_}.{name}: reason must be a string and at a number")
        out[name] = Revoked(reason[:200], float(at))
    return out


def _check_kid(kid: object) -> None:
    if not isinstance(kid, str) or len(kid) != 32 or any(c not in "0123456789abcdef" for c in kid):
        raise RecordError(f"operator key id {kid!r} is not 32 lowercase hex digits")


def _sequence(obj: dict[str, Any]) -> int:
    seq = obj.get("sequence")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise RecordError("sequence is not a non-negative integer")
    return seq
