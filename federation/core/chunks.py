"""Endpoint chunks: a large export stored as a small export record plus chunk records of its endpoints. Pure.

The writer's side (`plan_layout`, `place`, `encode_chunk`) decides how many chunks an export has and which
endpoint goes into which; the reader's side (`decode_chunk`, `Chunked`) decodes one chunk at a time and
assembles an export only from chunks of the generation its export record names, all of them present.

What `generation` means (docs/architecture.md, "The record envelope"): it names one *layout*, the chunk
count and the placement of endpoints in chunks. Placement is a hash of each endpoint's identity (its
hostname, else its first address) modulo the chunk count, so within a generation an endpoint has exactly
one chunk, and a change to it rewrites that chunk alone (same generation, the export record untouched).
A new layout (another chunk count) takes a new generation, and the export and every chunk are rewritten
together; a reader that holds chunks of two generations assembles nothing from them, and keeps the last
complete export it had until the chunks of the export's generation are all in.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from itertools import chain

from federation.core.codec import SCHEMA, Layout, dump_json, endpoint_in, endpoint_out, load_record
from federation.core.errors import RecordError
from federation.core.keys import ChunkKey
from federation.core.records import Endpoint, ServiceExport, validate_endpoints

ExportId = tuple[str, str, str]
"""(site, namespace, name)"""


@dataclass(frozen=True, slots=True)
class EndpointChunk:
    """One decoded chunk: some of an export's endpoints, validated on their own."""

    index: int
    generation: int
    endpoints: tuple[Endpoint, ...]
    hostnames: frozenset[str]
    """Hostnames its endpoints carry (unique across the export: checked when assembled)."""
    port_names: frozenset[str]
    """Service port names its endpoints name (each must be a port of the export: checked when assembled)."""


# ---------------------------------------------------------------- writing


def plan_layout(count: int, size: int, stored: Layout | None, now_ms: int) -> Layout | None:
    """The layout for an export of `count` endpoints with chunks of about `size` (0: never chunked); None:
    endpoints inline.

    A stored layout is kept while its chunks hold between a quarter and one and a half times `size` on
    average, so an export whose size wavers around a boundary does not change layout (and rewrite every
    chunk) each time. A new layout's generation is the writer's clock in ms, past the stored one.
    """
    if size <= 0:
        return None
    if stored is not None and size * stored.chunks / 4 <= count <= size * stored.chunks * 3 / 2:
        return stored
    if count <= size:
        return None
    generation = max(now_ms, stored.generation + 1 if stored is not None else 0)
    return Layout(-(-count // size), generation)


def identity(endpoint: Endpoint) -> str:
    """What places an endpoint: its hostname, else its first address (stable while the endpoint lives)."""
    return endpoint.hostname or (endpoint.addresses[0] if endpoint.addresses else "")


def place(endpoints: tuple[Endpoint, ...], chunks: int) -> list[tuple[Endpoint, ...]]:
    """The endpoints of each of `chunks` chunks, in their given order within a chunk."""
    out: list[list[Endpoint]] = [[] for _ in range(chunks)]
    for e in endpoints:
        out[zlib.crc32(identity(e).encode()) % chunks].append(e)
    return [tuple(c) for c in out]


def encode_chunk(export: ServiceExport, index: int, generation: int, endpoints: tuple[Endpoint, ...]) -> bytes:
    """A chunk record as canonical JSON bytes."""
    return dump_json({
        "schema": SCHEMA, "kind": "EndpointChunk", "site": export.site, "namespace": export.namespace,
        "name": export.name, "index": index, "generation": generation,
        "endpoints": [endpoint_out(e) for e in endpoints],
    })  # fmt: skip


# ---------------------------------------------------------------- reading


def decode_chunk(key: ChunkKey, data: bytes) -> EndpointChunk:
    """Validate and decode a chunk record stored under `key` (its endpoints on their own)."""
    obj = load_record(data, "EndpointChunk")
    for fld, want in (("site", key.site), ("namespace", key.namespace), ("name", key.name), ("index", key.index)):
        if obj.get(fld) != want:
            raise RecordError(f"record says {fld} {obj.get(fld)!r} but its key says {want!r}")
    generation = obj.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise RecordError(f"generation {generation!r} is not a whole number")
    raw = obj.get("endpoints")
    if not isinstance(raw, list):
        raise RecordError("endpoints is not a list")
    endpoints = tuple(endpoint_in(e, i) for i, e in enumerate(raw))
    hostnames, ports = validate_endpoints(endpoints, None)
    return EndpointChunk(key.index, generation, endpoints, hostnames, ports)


class Chunked:
    """The chunked exports a reader holds: each export record's layout and the chunks seen, by export."""

    def __init__(self) -> None:
        self._headers: dict[ExportId, tuple[ServiceExport, Layout]] = {}
        self._chunks: dict[ExportId, dict[int, EndpointChunk]] = {}

    def header(self, ident: ExportId, export: ServiceExport | None, layout: Layout | None = None) -> None:
        """The export record of `ident` is now `export` with `layout` (None for either: not chunked, or gone)."""
        if export is None or layout is None:
            self._headers.pop(ident, None)
            if export is None and not self._chunks.get(ident):
                self._chunks.pop(ident, None)
        else:
            self._headers[ident] = (export, layout)

    def put(self, ident: ExportId, chunk: EndpointChunk) -> None:
        """Take a chunk; RecordError if its export's layout says it cannot be current (a stale or replayed one).

        A chunk of a later generation than its export is held: the export may follow (one transaction).
        """
        have = self._headers.get(ident)
        if have is not None:
            layout = have[1]
            if chunk.generation < layout.generation:
                raise RecordError(f"chunk of generation {chunk.generation}, older than its export's "
                                  f"({layout.generation}): a stale or replayed chunk")
            if chunk.generation == layout.generation and chunk.index >= layout.chunks:
                raise RecordError(f"chunk {chunk.index} of generation {chunk.generation}, whose export has "
                                  f"{layout.chunks} chunks")
        self._chunks.setdefault(ident, {})[chunk.index] = chunk

    def drop(self, ident: ExportId, index: int) -> None:
        """A chunk was deleted (or refused)."""
        chunks = self._chunks.get(ident)
        if chunks is not None:
            chunks.pop(index, None)
            if not chunks:
                del self._chunks[ident]

    def chunked(self, ident: ExportId) -> bool:
        """True if the export record of `ident` says its endpoints are in chunks."""
        return ident in self._headers

    def assemble(self, ident: ExportId) -> ServiceExport | None:
        """The whole export, if its record is chunked and every chunk of its generation is in; else None.

        RecordError if the chunks disagree with each other or with the export (a hostname twice, a port
        that is not the service's).
        """
        have = self._headers.get(ident)
        if have is None:
            return None
        export, layout = have
        chunks = self._chunks.get(ident, {})
        parts = [chunks.get(i) for i in range(layout.chunks)]
        if any(c is None or c.generation != layout.generation for c in parts):
            return None
        return _joined(export, [c for c in parts if c is not None])

    def __len__(self) -> int:
        return sum(map(len, self._chunks.values()))


def _joined(export: ServiceExport, parts: list[EndpointChunk]) -> ServiceExport:
    names = {p.name for p in export.ports}
    for c in parts:
        if not c.port_names <= names:
            raise RecordError(f"chunk {c.index} names port(s) {', '.join(sorted(c.port_names - names))}, "
                              "which are not service ports")
    if sum(len(c.hostnames) for c in parts) != len(frozenset().union(*(c.hostnames for c in parts))):
        raise RecordError("a hostname is used twice across the export's chunks")
    return replace(export, endpoints=tuple(chain.from_iterable(c.endpoints for c in parts)))

