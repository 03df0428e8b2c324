"""What a site should have in etcd, and the smallest set of writes that gets it there. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from federation.core.codec import decode_export, encode_export, encode_site
from federation.core.errors import RecordError
from federation.core.keys import Keys, ServiceKey
from federation.core.records import ServiceExport, Site, validate_export, validate_site


@dataclass(frozen=True, slots=True)
class Stored:
    """What etcd holds at a key: the value and the lease it is bound to."""

    value: bytes
    lease: int


@dataclass(frozen=True, slots=True)
class PutOp:
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: str


def desired_records(
    keys: Keys,
    site: Site,
    exports: Iterable[ServiceExport],
    actual: Mapping[str, Stored],
    now: float,
) -> dict[str, bytes]:
    """Every key/value the site should hold.

    An export keeps the `exported_at` already stored for it (so a restart does not make it the youngest
    export and lose a conflict it had won); a new export is stamped `now`.
    """
    validate_site(site)
    out = {keys.site(site.name): encode_site(site)}
    for export in exports:
        if export.site != site.name:
            raise RecordError(f"export {export.namespace}/{export.name} names site {export.site!r}, not {site.name!r}")
        key = keys.service(site.name, export.namespace, export.name)
        stamp = export.exported_at or _stored_stamp(keys, key, actual) or now
        stamped = dataclasses.replace(export, exported_at=stamp)
        validate_export(stamped)
        out[key] = encode_export(stamped)
    return out


def plan(desired: Mapping[str, bytes], actual: Mapping[str, Stored], lease: int) -> list[PutOp | DeleteOp]:
    """Puts for keys whose value or lease differ, deletes for keys no longer wanted; nothing else."""
    ops: list[PutOp | DeleteOp] = []
    for key, value in sorted(desired.items()):
        have = actual.get(key)
        if have is None or have.value != value or have.lease != lease:
            ops.append(PutOp(key, value))
    ops.extend(DeleteOp(key) for key in sorted(set(actual) - set(desired)))
    return ops


def _stored_stamp(keys: Keys, key: str, actual: Mapping[str, Stored]) -> float:
    have = actual.get(key)
    if have is None:
        return 0.0
    try:
        parsed = keys.parse(key)
        if not isinstance(parsed, ServiceKey):
            return 0.0
        return decode_export(parsed, have.value).exported_at
    except RecordError:
        return 0.0
