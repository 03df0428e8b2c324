"""Signing a site's records on their way to etcd, rewriting only what changed. Pure (the key is in `Seal.sign`).

The publisher computes the records it wants (`publishing.desired_records`); `seal` signs them. A record
whose stored version already carries this content, signed by the current key, keeps its stored bytes,
so re-declaring the same exports still writes nothing, and a restart rewrites nothing. The site record
gains what readers verify the others against: `signers` (the signing certificates, current first),
`records` (every export the site publishes, so a stale export replayed under the site's prefix is
refused), `owner` (which agent instance writes for the site: a copy of its machine is told apart) and
whatever else the agent reports there (`trustSequence`: the trust bundle it has taken, for rotations).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from federation.core import envelope
from federation.core.codec import dump_json
from federation.core.errors import RecordError
from federation.core.keys import Keys, ServiceKey

Sign = Callable[[str, bytes, int], bytes]
"""(etcd key, the record's canonical JSON, signed-at ms) -> the stored value with its signature."""


@dataclass(frozen=True, slots=True)
class Seal:
    """What signs a site's records now."""

    kid: str
    """The key id of the current signer."""
    signers: tuple[str, ...]
    """PEM certificates the site record lists: the current signer first, then one being retired."""
    sign: Sign


@dataclass(frozen=True, slots=True)
class Stamped:
    """A stored value taken apart: its signed body and when it was signed (None when unsigned)."""

    body: bytes
    kid: str | None
    at: int


def seal(keys: Keys, site: str, desired: Mapping[str, bytes], actual: Mapping[str, bytes], kit: Seal,
         now_ms: int, owner: str = "", fields: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """The signed values of `desired` (canonical unsigned records), reusing the stored ones in `actual` that
    already hold the same content signed by the current key. Later versions of a key sign later."""
    out: dict[str, bytes] = {}
    site_key = keys.site(site)
    listed = sorted(f"{p.namespace}/{p.name}" for p in map(_parse(keys), desired) if isinstance(p, ServiceKey))
    for key, value in desired.items():
        body = value
        if key == site_key:
            obj: dict[str, Any] = json.loads(value)
            obj["signers"] = list(kit.signers)
            obj["records"] = listed
            if owner:
                obj["owner"] = owner
            obj.update(fields or {})
            body = dump_json(obj)
        have = stamped(actual[key]) if key in actual else None
        if have is not None and have.kid == kit.kid and have.body == body:
            out[key] = actual[key]
            continue
        at = max(now_ms, have.at + 1) if have is not None else now_ms
        out[key] = kit.sign(key, body, at)
    return out


def stamped(value: bytes) -> Stamped | None:
    """A stored value's signed body, key id and signing time; None if it is malformed."""
    try:
        split = envelope.split(value)
    except RecordError:
        return None
    sig = split.signature
    return Stamped(split.body, sig.kid if sig else None, sig.at if sig else 0)


def owner_of(value: bytes) -> str:
    """The `owner` a stored site record names ("" when none, or unreadable)."""
    try:
        obj = json.loads(envelope.split(value).body)
    except (ValueError, RecordError):
        return ""
    owner = obj.get("owner", "") if isinstance(obj, dict) else ""
    return owner if isinstance(owner, str) else ""


def _parse(keys: Keys) -> Callable[[str], object]:
    def parse(key: str) -> object:
        try:
            return keys.parse(key)
        except RecordError:
            return None

    return parse
