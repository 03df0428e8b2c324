"""The signature envelope every signed registry record carries. Pure: no crypto, no IO, no clock.

A signed record is the record's canonical JSON (`codec.dump_json`) with one more top-level field, last:

    "sig": {"alg": "ES256", "at": <ms since the epoch>, "kid": <32 hex>, "value": <base64 DER signature>}

The signature covers `payload(key, alg, at, kid, body)`: a fixed label, the etcd key, the three header
fields and the canonical JSON of the record without `sig` (the body). So a signature cannot be moved to
another key, and `at` (when it was signed) cannot be changed. Readers find the one `sig` field in the raw
bytes and cut it out (`split`) instead of decoding and re-encoding the record: the body comes back byte for
byte as it was signed, and verification costs one signature check, not a second JSON round trip.
Readers that do not know signatures ignore the field, as they ignore every unknown field.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from federation.core.codec import dump_json
from federation.core.errors import RecordError

ALG = "ES256"
"""ECDSA P-256 with SHA-256: the curve of every meshfed key, verified by OpenSSL in ~0.1 ms."""
LABEL = b"meshfed-record-signature-v1"
"""Domain separation: these signatures can never be mistaken for TLS or X.509 ones."""
FIELD = "sig"

_SIG = re.compile(
    rb'"sig":\{"alg":"([A-Z0-9]{2,16})","at":([0-9]{1,15}),"kid":"([0-9a-f]{32})","value":"([A-Za-z0-9+/]{40,200}={0,2})"\}'
)
_ANY_SIG = b'"sig":{'
"""A key `sig` holding an object: in JSON a string value can never be followed by `:{`, so this is a
`sig` field, well-formed or not."""


@dataclass(frozen=True, slots=True)
class Signature:
    """The `sig` field of a record."""

    alg: str
    at: int
    """Milliseconds since the epoch when the record was signed (later versions of a key sign later)."""
    kid: str
    """Which key signed: the first 16 bytes of the SHA-256 of the signing certificate's DER, in hex."""
    value: bytes


@dataclass(frozen=True, slots=True)
class Split:
    """A stored value taken apart: the body that was signed and its signature (None: unsigned)."""

    body: bytes
    signature: Signature | None


def payload(key: str, alg: str, at: int, kid: str, body: bytes) -> bytes:
    """What a signature covers."""
    return b"\0".join((LABEL, key.encode(), alg.encode(), str(at).encode(), kid.encode(), body))


def split(value: bytes) -> Split:
    """The signed body and signature of a stored value; RecordError for a malformed or doubled `sig`.

    Cutting the field out leaves exactly the canonical JSON that was signed (`seal` appended it, and the
    comma before it goes with it). Were the field cut from a nested object instead, the body still
    verifies only if it is what the signer signed, and the record decodes to the same thing.
    """
    matches = list(_SIG.finditer(value))
    if not matches:
        if _ANY_SIG in value:
            raise RecordError("the record's signature (sig) is malformed")
        return Split(value, None)
    if len(matches) > 1:
        raise RecordError("the record carries more than one signature (sig)")
    m = matches[0]
    start, end = m.span()
    if value[start - 1:start] == b",":
        start -= 1
    elif value[end:end + 1] == b",":
        end += 1
    try:
        raw = base64.b64decode(m.group(4), validate=True)
    except binascii.Error:
        raise RecordError("the record's signature value is not base64") from None
    sig = Signature(m.group(1).decode(), int(m.group(2)), m.group(3).decode(), raw)
    return Split(value[:start] + value[end:], sig)


def seal(body: bytes, sig: Signature) -> bytes:
    """The stored value: the record's canonical JSON (`body`, an object) with its signature appended.

    Appended, not sorted in: signing then costs no second encoding of the record (readers take the
    field from wherever it is, and nothing compares signed values but the publisher's seal step)."""
    if not body.startswith(b"{") or not body.endswith(b"}"):
        raise ValueError("a record is a JSON object")
    if _ANY_SIG in body:
        raise ValueError("the record already carries a signature")
    header = dump_json({"alg": sig.alg, "at": sig.at, "kid": sig.kid, "value": base64.b64encode(sig.value).decode()})
    return body[:-1] + (b',"sig":' if body != b"{}" else b'"sig":') + header + b"}"


def unsigned(obj: dict[str, Any]) -> dict[str, Any]:
    """A decoded record without its signature field (what `body` decodes to)."""
    return {k: v for k, v in obj.items() if k != FIELD}
