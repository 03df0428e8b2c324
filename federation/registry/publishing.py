"""What a site should have in etcd, and the smallest set of writes that gets it there. Pure."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from federation.core.chunks import encode_chunk, place, plan_layout
from federation.core.codec import Layout, encode_export, encode_site, layout_of
from federation.core.errors import RecordError
from federation.core.keys import Keys
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
    chunk_size: int = 0,
    memo: Memo | None = None,
) -> dict[str, bytes]:
    """Every key/value the site should hold.

    An export keeps the `exported_at` already stored for it (so a restart does not make it the youngest
    export and lose a conflict it had won); a new export is stamped `now`. With `chunk_size`, an export of
    more endpoints is an export record plus endpoint chunks (`core/chunks.py`), keeping the stored layout
    while it fits, so that one endpoint change rewrites one chunk. With `memo` (kept by the caller between
    calls), an export equal to the one of the last call, over the same stored record, is not validated and
    encoded again: a change costs the changed exports, not the site.
    """
    validate_site(site)
    out = {keys.site(site.name): encode_site(site)}
    seen: set[str] = set()
    for export in exports:
        if export.site != site.name:
            raise RecordError(f"export {export.namespace}/{export.name} names site {export.site!r}, not {site.name!r}")
        key = keys.service(site.name, export.namespace, export.name)
        have = actual.get(key)
        seen.add(key)
        hit = memo.get(key) if memo is not None else None
        if hit is not None and hit[1] == chunk_size and hit[2] == (have.value if have else None) and hit[0] == export:
            out.update(hit[3])
            continue
        mine = _records(keys, site, export, key, have, now, chunk_size)
        if memo is not None:
            memo[key] = (export, chunk_size, have.value if have else None, mine)
        out.update(mine)
    if memo is not None:
        for key in set(memo) - seen:
            del memo[key]
    return out


Memo = dict[str, tuple[ServiceExport, int, bytes | None, dict[str, bytes]]]
"""export key -> (the export, the chunk size, the stored value it was planned over, its records)"""


def _records(keys: Keys, site: Site, export: ServiceExport, key: str, have: Stored | None,
             now: float, chunk_size: int) -> dict[str, bytes]:
    """The records of one export: its record, and its chunks when it is chunked."""
    # Read only when needed (a stored whole record is as large as its endpoints), and never validated again.
    chunked = have is not None and chunk_size > 0 and b'"endpointChunks"' in have.value
    stored_at, stored_layout = _stored(have) if chunked or not export.exported_at else (0.0, None)
    stamp = export.exported_at or stored_at or now
    stamped = dataclasses.replace(export, exported_at=stamp)
    validate_export(stamped)
    layout = plan_layout(len(export.endpoints), chunk_size, stored_layout, int(now * 1000))
    out = {key: encode_export(stamped, layout)}
    if layout is not None:
        for i, endpoints in enumerate(place(stamped.endpoints, layout.chunks)):
            out[keys.chunk(site.name, export.namespace, export.name, i)] = encode_chunk(
                stamped, i, layout.generation, endpoints)
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


def packed(ops: list[PutOp | DeleteOp], limit: int) -> list[list[PutOp | DeleteOp]]:
    """`ops` in transactions of at most `limit`, the ops of one export (its chunks, then its record) in one
    transaction wherever they fit in one, so that a reader never sees half of one change."""
    groups: dict[str, list[PutOp | DeleteOp]] = {}
    for op in ops:
        groups.setdefault(op.key.split("/endpoints/", 1)[0], []).append(op)
    out: list[list[PutOp | DeleteOp]] = [[]]
    for group in groups.values():
        # Chunks first, the export record last: should one export take more than one transaction, a reader in
        # between holds the new chunks (of a later generation than the record it has) and keeps the old export.
        group.sort(key=lambda op: "/endpoints/" not in op.key)
        if out[-1] and len(out[-1]) + len(group) > limit:
            out.append([])
        out[-1].extend(group)
        while len(out[-1]) > limit:  # one export of more chunks than a transaction holds
            out.insert(len(out) - 1, out[-1][:limit])
            del out[-1][:limit]
    return [batch for batch in out if batch]


def _stored(have: Stored | None) -> tuple[float, Layout | None]:
    """The `exportedAt` and chunk layout of a stored export ((0.0, None) when there is none or it is unreadable):
    its JSON read, its endpoints not decoded (this publisher wrote it; readers validate it)."""
    if have is None:
        return 0.0, None
    try:
        obj = json.loads(have.value)
        at = obj.get("exportedAt", 0.0) if isinstance(obj, dict) else 0.0
        layout = layout_of(obj) if isinstance(obj, dict) else None
    except (ValueError, RecordError):
        return 0.0, None
    return (float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0), layout
