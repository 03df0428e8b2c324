"""The last complete registry view on disk, so an agent restarted while etcd is away serves what it knew.

What is kept is the raw listing as the mirror applied it: every key under the registry prefix with its
value and mod revision, and the revision the listing stands at. Loading it goes through the very code a
real listing goes through (`Catalog.resync`: every record validated again), so a snapshot can never
hold more than etcd said. The file is gzip-compressed JSON with a format version, written atomically,
0600, at most every `interval` seconds while the registry changes, only from listings this process
made (never from a view it restored), and never larger than `max_bytes` (uncompressed): beyond that the
agent keeps no snapshot and says so.

    {"format": "meshfed-registry-snapshot", "version": 1, "prefix": "/meshfed/v1/", "revision": 812,
     "savedAt": 1767225600.0, "records": [["/meshfed/v1/sites/east", "{...}", 12], ...]}
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import immutables

from federation.core.catalog import Listed
from federation.core.errors import RecordError
from federation.runtime.files import write_private
from federation.runtime.values import Value, follow

log = logging.getLogger(__name__)

FORMAT = "meshfed-registry-snapshot"
VERSION = 1


@dataclass(frozen=True, slots=True)
class Saved:
    """A snapshot read back: the listing, the revision it stands at, and when it was written (Unix time)."""

    listing: Mapping[str, Listed]
    revision: int
    saved_at: float


class RawListing:
    """The raw listing as the mirror applied it, in a persistent map (a snapshot of it costs nothing), with
    its size bounded: over `max_bytes` nothing is kept until a later full listing fits again."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: immutables.Map[str, tuple[bytes, int]] = immutables.Map()
        self.revision = 0
        self.size = 0
        self.over = False
        """True while the listing is larger than `max_bytes` (then nothing is kept)."""
        self.changed: Value[int] = Value(0, name="raw registry listing")
        """Grows with every change: what the writer follows."""

    def replace(self, listing: Mapping[str, Listed], revision: int) -> None:
        """A full listing from etcd."""
        size = sum(len(k) + len(v.value) for k, v in listing.items())
        self.revision = revision
        if size > self.max_bytes:
            self._drop()
            return
        self.over = False
        self.items = immutables.Map({k: (v.value, v.mod_revision) for k, v in listing.items()})
        self.size = size
        self.changed.set(self.changed.get() + 1)

    def put(self, key: str, value: bytes, revision: int) -> None:
        """One watched put."""
        self.revision = max(self.revision, revision)
        if self.over:
            return
        old = self.items.get(key)
        self.size += len(value) - (len(old[0]) if old is not None else -len(key))
        if self.size > self.max_bytes:
            self._drop()
            return
        self.items = self.items.set(key, (value, revision))
        self.changed.set(self.changed.get() + 1)

    def delete(self, key: str, revision: int) -> None:
        """One watched delete."""
        self.revision = max(self.revision, revision)
        old = self.items.get(key)
        if old is None or self.over:
            return
        self.size -= len(key) + len(old[0])
        self.items = self.items.delete(key)
        self.changed.set(self.changed.get() + 1)

    def _drop(self) -> None:
        if not self.over:
            log.warning("registry snapshot: the registry is larger than registry.snapshot_max_bytes (%d bytes); "
                        "keeping no snapshot (a restart without etcd would serve nothing)", self.max_bytes)
        self.over = True
        self.items = immutables.Map()
        self.size = 0
        self.changed.set(self.changed.get() + 1)


def encode(items: Mapping[str, tuple[bytes, int]], revision: int, prefix: str, saved_at: float) -> bytes:
    """The file's bytes for a listing."""
    doc = {
        "format": FORMAT, "version": VERSION, "prefix": prefix, "revision": revision, "savedAt": saved_at,
        # latin-1 maps every byte to one code point and back: any value survives, JSON text stays readable.
        "records": [[k, v.decode("latin-1"), rev] for k, (v, rev) in sorted(items.items())],
    }  # fmt: skip
    return gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), compresslevel=6, mtime=0)


def decode(data: bytes, prefix: str, max_bytes: int) -> Saved:
    """A snapshot file's listing; RecordError with the reason if it is not one this agent can use."""
    try:
        d = zlib.decompressobj(wbits=31)  # gzip framing; bounded, so a hostile file cannot blow up memory
        raw = d.decompress(data, max_bytes + 1024)
        if d.unconsumed_tail or len(raw) > max_bytes + 1023:
            raise RecordError(f"larger than registry.snapshot_max_bytes ({max_bytes} bytes)")
        doc = json.loads(raw)
    except (zlib.error, ValueError) as exc:
        raise RecordError(f"not a readable snapshot: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RecordError("not a meshfed registry snapshot")
    if doc.get("version") != VERSION:
        raise RecordError(f"snapshot format version {doc.get('version')!r}, this agent reads {VERSION}")
    if doc.get("prefix") != prefix:
        raise RecordError(f"snapshot of prefix {doc.get('prefix')!r}, not {prefix!r}")
    try:
        listing = {str(k): Listed(str(v).encode("latin-1"), int(rev)) for k, v, rev in doc["records"]}
        return Saved(listing, int(doc["revision"]), float(doc["savedAt"]))
    except (KeyError, TypeError, ValueError, UnicodeEncodeError) as exc:
        raise RecordError(f"malformed snapshot: {exc}") from None


SHARE = 20
"""A write taking t seconds of CPU is followed by none for SHARE x t (at least `interval`): at most 5 % of a core."""


class SnapshotFile:
    """Reads the snapshot at start and keeps it up to date from a `RawListing` (`run`)."""

    def __init__(self, path: Path, prefix: str, raw: RawListing, *, interval: float = 5.0) -> None:
        self.path = path
        self.prefix = prefix
        self.raw = raw
        self.interval = interval
        self.cost = 0.0
        """CPU seconds the last write took (encoding and compressing the whole listing)."""
        self.written = 0
        """Snapshots written since start (tests, status)."""
        self._saved: tuple[int, int] = (-1, -1)

    def load(self) -> Saved | None:
        """The snapshot on disk, or None (no file, or one that cannot be used: logged with the reason)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("registry snapshot %s: cannot read it: %s", self.path, exc.strerror)
            return None
        try:
            return decode(data, self.prefix, self.raw.max_bytes)
        except RecordError as exc:
            log.warning("registry snapshot %s: not used: %s", self.path, exc)
            return None

    async def run(self) -> None:
        """Write the listing whenever it changed, at most every `interval` seconds, until cancelled; a last
        write on the way out keeps the newest state for the next start."""
        loop = asyncio.get_running_loop()
        last = 0.0
        gap = self.interval
        try:
            async for _ in follow(self.raw.changed):
                wait = last + gap - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                last = loop.time()
                due = self._due()
                if due is not None:
                    await asyncio.to_thread(self._write, *due)
                    # The whole listing is written each time: a large registry under churn is written less
                    # often, so the snapshot costs at most 1/SHARE of a core whatever the mesh size.
                    gap = max(self.interval, SHARE * self.cost)
        finally:
            due = self._due()
            if due is not None:
                with contextlib.suppress(OSError):
                    self._write(*due)

    def write(self) -> bool:
        """Write the listing now if it changed since the last write; True if it wrote."""
        due = self._due()
        return due is not None and self._write(*due)

    def _due(self) -> tuple[immutables.Map[str, tuple[bytes, int]], int, bool] | None:
        """What to write, taken in one go on the loop (the map is immutable), or None if nothing changed."""
        raw = self.raw
        stamp = (raw.changed.version, raw.revision)
        if stamp == self._saved or not raw.changed.version:
            return None
        self._saved = stamp
        return raw.items, raw.revision, raw.over

    def _write(self, items: immutables.Map[str, tuple[bytes, int]], revision: int, over: bool) -> bool:
        if over:
            self.path.unlink(missing_ok=True)  # an old snapshot would be served as if it were the last one
            return False
        started = time.thread_time()
        data = encode(items, revision, self.prefix, time.time())
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.path, data)
        self.cost = time.thread_time() - started
        self.written += 1
        return True
