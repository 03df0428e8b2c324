"""The catalog: a pure, synchronous core fed with etcd puts, deletes and resyncs.

It turns raw key/values into typed records, emits only real differences as typed events, reports
rejected records (never raises on remote input) and keeps the MCS conflict rule applied incrementally.
Work is in proportion to the change: records live in persistent maps (a new view shares everything
that did not change), a record is decoded only when its etcd revision moved, and each view says which
services and sites changed since the one before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import immutables

from federation.core.chunks import Chunked, decode_chunk
from federation.core.codec import decode_export_layout, decode_site
from federation.core.errors import RecordError
from federation.core.heartbeat import Heartbeat, decode_heartbeat
from federation.core.keys import ChunkKey, ClaimKey, HeartbeatKey, Keys, ServiceKey, SiteKey, VipKey
from federation.core.records import ServiceExport, Site
from federation.core.verification import RecordCheck
from federation.core.view import (
    ChangeLog,
    Changes,
    Event,
    ExportId,
    FederatedService,
    MeshView,
    ServiceAdded,
    ServiceChanged,
    ServiceId,
    ServiceRemoved,
    SiteAdded,
    SiteChanged,
    SiteRemoved,
    resolve,
)
from federation.core.vips import Allocation, Claim, decode_allocation, decode_claim

Imports = Callable[[ServiceKey], bool]
"""Whether this reader wants an export (scoped imports): the others are never decoded."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that failed validation: its key and why."""

    key: str
    reason: str


@dataclass(slots=True)
class Outcome:
    """What one put, delete or resync did."""

    events: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    changed: bool = False
    """True when a record without typed events changed (VIP allocations and claims): a new view is due."""
    beat: Heartbeat | None = None
    """A site's new heartbeat (verified): for the lag meter only; it makes no view."""
    beat_gone: str | None = None
    """The site whose heartbeat was deleted (its lease expired)."""

    def add(self, other: Outcome) -> None:
        """Take in the events, rejects and changes of `other` (not its heartbeats)."""
        self.events += other.events
        self.rejected += other.rejected
        self.changed = self.changed or other.changed


@dataclass(frozen=True, slots=True)
class Listed:
    """One key of a listing: its value and the revision it was last written at."""

    value: bytes
    mod_revision: int = 0


class Catalog:
    """Typed state of every valid record under one key prefix, updated by puts, deletes and resyncs."""

    def __init__(self, keys: Keys, *, imports: Imports | None = None, history: int = 4096,
                 check: RecordCheck | None = None) -> None:
        self._keys = keys
        self._imports = imports
        self._check = check
        """Signature verification (the agent's `pki.records.RecordVerifier`); None takes records unverified."""
        self._revs: dict[str, int] = {}
        """Key -> the etcd revision of the value last applied (0: revision unknown, compare values)."""
        self._digests: dict[str, int] = {}
        """Key -> hash of a value applied without a revision (tests, tools)."""
        self._sites: immutables.Map[str, Site] = immutables.Map()
        self._exports: immutables.Map[ExportId, ServiceExport] = immutables.Map()
        self._resolved: immutables.Map[ServiceId, FederatedService] = immutables.Map()
        self._vips: immutables.Map[ServiceId, Allocation] = immutables.Map()
        self._claims: immutables.Map[str, Claim] = immutables.Map()
        self._refused_vips: immutables.Map[str, int] = immutables.Map()
        self._by_service: dict[ServiceId, set[ExportId]] = {}
        self._by_site: dict[str, set[ExportId]] = {}
        self._chunked = Chunked()
        """Chunked exports' records and chunks (docs/architecture.md, "The record envelope")."""
        self._rejected: dict[str, str] = {}
        self._dirty: set[ServiceId] = set()
        """Services to resolve again."""
        self._vips_changed: set[ServiceId] = set()
        """Services whose VIP allocation came, went or changed (their readers look again)."""
        self._claims_changed = False
        self._sites_changed: set[str] = set()
        self._log = ChangeLog(history)
        self._generation = 0
        self._view: MeshView | None = None
        self.revision = 0
        self.skipped = 0
        """Keys of services this site does not import, left undecoded."""

    # -- inputs

    def put(self, key: str, value: bytes, revision: int = 0) -> Outcome:
        """Apply one put of `key` (written at `revision`, when known)."""
        out = Outcome()
        self.revision = max(self.revision, revision)
        if self._unchanged(key, value, revision):
            return out
        self._apply(key, value, out)
        return out

    def delete(self, key: str, revision: int = 0) -> Outcome:
        """Apply one delete of `key`."""
        out = Outcome()
        self.revision = max(self.revision, revision)
        known = self._revs.pop(key, None) is not None
        known = self._digests.pop(key, None) is not None or known
        if not known:
            return out
        self._rejected.pop(key, None)
        self._refuse_vip(key, None)
        self._remove(key, out)
        return out

    def resync(self, kvs: Mapping[str, Listed | bytes], revision: int) -> Outcome:
        """Replace the whole state with a fresh listing; emit only what really differs.

        A key listed at the revision already applied is not decoded again.
        """
        out = Outcome()
        for step in self.resync_steps(kvs, revision):
            out.add(step)
        return out

    def resync_steps(self, kvs: Mapping[str, Listed | bytes], revision: int, batch: int = 512) -> Iterator[Outcome]:
        """`resync` in steps of at most `batch` keys, so that a caller can yield to other work in between.

        The state between steps is partial; take no `view()` before the last step.
        """
        known = set(self._revs) | set(self._digests)
        gone = sorted(known - set(kvs))
        for start in range(0, len(gone), batch):
            out = Outcome()
            for key in gone[start:start + batch]:
                out.add(self.delete(key))
            yield out
        keys = sorted(kvs)
        for start in range(0, len(keys), batch):
            out = Outcome()
            for key in keys[start:start + batch]:
                listed = kvs[key]
                value, rev = (listed.value, listed.mod_revision) if isinstance(listed, Listed) else (listed, 0)
                out.add(self.put(key, value, rev))
            yield out
        self.revision = revision

    def revision_of(self, key: str) -> int:
        """The etcd revision of the value last put at `key`, accepted or refused (0: unknown)."""
        return self._revs.get(key, 0)

    def forget(self, keys: Iterable[str] | None = None) -> None:
        """Forget at which revision `keys` (default: every key) were applied, so that the next put or listing
        decodes and verifies them again (the roots or revocations they were verified against changed)."""
        for key in list(self._revs) + list(self._digests) if keys is None else keys:
            self._revs.pop(key, None)
            self._digests.pop(key, None)

    # -- outputs

    def view(self) -> MeshView:
        """An immutable snapshot of the current state; a new one only when something changed."""
        if (self._view is not None and not self._dirty and not self._sites_changed and not self._vips_changed
                and not self._claims_changed and self._view.revision == self.revision):
            return self._view
        touched = self._dirty | self._vips_changed
        for site in self._sites_changed:
            touched.update(e[1:] for e in self._by_site.get(site, ()))
        if self._dirty:
            resolved = self._resolved.mutate()
            for key in self._dirty:
                members = [self._exports[i] for i in self._by_service.get(key, ()) if i[0] in self._sites]
                if members:
                    resolved[key] = resolve(members)
                elif key in resolved:
                    del resolved[key]
            self._resolved = resolved.finish()
        if touched or self._sites_changed or self._claims_changed or self._view is None:
            self._generation += 1
            self._log.append(self._generation, Changes(frozenset(touched), frozenset(self._sites_changed)))
        self._dirty.clear()
        self._vips_changed.clear()
        self._sites_changed.clear()
        self._claims_changed = False
        self._view = MeshView(
            sites=self._sites, exports=self._exports, revision=self.revision, generation=self._generation,
            resolved=self._resolved, history=self._log, vips=self._vips, claims=self._claims,
            refused_vips=self._refused_vips,
        )  # fmt: skip
        return self._view

    @property
    def rejected(self) -> Mapping[str, str]:
        """Keys currently holding an invalid record, with the reason."""
        return MappingProxyType(self._rejected)

    def __len__(self) -> int:
        return len(self._sites) + len(self._exports)

    # -- private

    def _unchanged(self, key: str, value: bytes, revision: int) -> bool:
        if revision:
            if self._revs.get(key) == revision:
                return True
            self._revs[key] = revision
            self._digests.pop(key, None)
            return False
        digest = hash(value)
        if self._digests.get(key) == digest and key not in self._revs:
            return True
        self._digests[key] = digest
        self._revs.pop(key, None)
        return False

    def _apply(self, key: str, value: bytes, out: Outcome) -> None:
        try:
            parsed = self._keys.parse(key)
            if parsed is None:
                return
            if isinstance(parsed, VipKey | ClaimKey):
                self._refuse_vip(key, self._revs.get(key, 0) or None)
                if self._check is not None:
                    self._check(key, parsed, value)
                if isinstance(parsed, VipKey):
                    self._put_vip(parsed, decode_allocation(value, self._revs.get(key, 0)), key)
                else:
                    self._put_claim(parsed, decode_claim(value, self._revs.get(key, 0)), key)
                self._refuse_vip(key, None)
                out.changed = True
                return
            if (isinstance(parsed, ServiceKey | ChunkKey) and self._imports is not None
                    and not self._imports(ServiceKey(parsed.site, parsed.namespace, parsed.name))):
                self.skipped += 1
                return
            if self._check is not None:
                self._check(key, parsed, value)
            if isinstance(parsed, SiteKey):
                self._put_site(decode_site(parsed, value), key, out)
                return
            if isinstance(parsed, HeartbeatKey):
                out.beat = decode_heartbeat(parsed, value)
                self._rejected.pop(key, None)
                return
            ident = (parsed.site, parsed.namespace, parsed.name)
            if isinstance(parsed, ChunkKey):  # one chunk decoded; the export is joined from those already held
                self._chunked.put(ident, decode_chunk(parsed, value))
                self._rejected.pop(key, None)
                export = self._chunked.assemble(ident)
            else:
                export, layout = decode_export_layout(parsed, value)
                self._chunked.header(ident, export, layout)
                export = export if layout is None else self._chunked.assemble(ident)
            if export is not None:  # else incomplete: the last complete version stays (a layout being rewritten)
                self._put_export(ident, export, key, out)
        except RecordError as exc:
            self._rejected[key] = str(exc)
            out.rejected.append(Rejected(key, str(exc)))
            # The key no longer holds a valid record: a fresh reader would not see one either.
            self._remove(key, out)

    def _refuse_vip(self, key: str, revision: int | None) -> None:
        """Note (a revision) or clear (None) a refused record at a `mesh/vips/` key."""
        if revision is not None:
            self._refused_vips = self._refused_vips.set(key, revision)
            self._claims_changed = True
        elif key in self._refused_vips:
            self._refused_vips = self._refused_vips.delete(key)
            self._claims_changed = True

    def _put_site(self, site: Site, key: str, out: Outcome) -> None:
        self._rejected.pop(key, None)
        old = self._sites.get(site.name)
        if old == site:
            return
        self._sites = self._sites.set(site.name, site)
        self._sites_changed.add(site.name)
        if old is None:
            self._touch_site(site.name)
            out.events.append(SiteAdded(site))
        else:
            out.events.append(SiteChanged(site, old))

    def _put_export(self, ident: ExportId, export: ServiceExport, key: str, out: Outcome) -> None:
        self._rejected.pop(key, None)
        old = self._exports.get(ident)
        if old == export:
            return
        self._exports = self._exports.set(ident, export)
        self._by_service.setdefault(export.service, set()).add(ident)
        self._by_site.setdefault(ident[0], set()).add(ident)
        self._dirty.add(export.service)
        out.events.append(ServiceAdded(export) if old is None else ServiceChanged(export, old))

    def _put_vip(self, parsed: VipKey, allocation: Allocation, key: str) -> None:
        if allocation.service != (parsed.namespace, parsed.name):
            raise RecordError("allocation names another service than its key")
        self._rejected.pop(key, None)
        old = self._vips.get(allocation.service)
        self._vips = self._vips.set(allocation.service, allocation)
        if old is None or old.addresses != allocation.addresses:
            self._vips_changed.add(allocation.service)
        else:
            self._claims_changed = True  # only the grace period moved: the allocator looks again

    def _put_claim(self, parsed: ClaimKey, claim: Claim, key: str) -> None:
        if claim.address != parsed.address:
            raise RecordError("claim names another address than its key")
        self._rejected.pop(key, None)
        self._claims = self._claims.set(claim.address, claim)
        self._claims_changed = True

    def _remove(self, key: str, out: Outcome) -> None:
        try:
            parsed = self._keys.parse(key)
        except RecordError:
            return
        if isinstance(parsed, VipKey):
            service = (parsed.namespace, parsed.name)
            if service in self._vips:
                self._vips = self._vips.delete(service)
                self._vips_changed.add(service)
                out.changed = True
            return
        if isinstance(parsed, HeartbeatKey):
            out.beat_gone = parsed.site
            return
        if isinstance(parsed, ClaimKey):
            if parsed.address in self._claims:
                self._claims = self._claims.delete(parsed.address)
                self._claims_changed = True
                out.changed = True
            return
        if isinstance(parsed, SiteKey):
            site = self._sites.get(parsed.site)
            if site is not None:
                self._sites = self._sites.delete(parsed.site)
                self._sites_changed.add(site.name)
                self._touch_site(site.name)
                out.events.append(SiteRemoved(site))
        elif isinstance(parsed, ChunkKey):
            self._chunked.drop((parsed.site, parsed.namespace, parsed.name), parsed.index)
        elif isinstance(parsed, ServiceKey):
            ident = (parsed.site, parsed.namespace, parsed.name)
            self._chunked.header(ident, None)
            export = self._exports.get(ident)
            if export is not None:
                self._exports = self._exports.delete(ident)
                _discard(self._by_service, export.service, ident)
                _discard(self._by_site, parsed.site, ident)
                self._dirty.add(export.service)
                out.events.append(ServiceRemoved(export))

    def _touch_site(self, site: str) -> None:
        """A site record came or went: every service it exports counts again, or no longer."""
        self._dirty.update(ident[1:] for ident in self._by_site.get(site, ()))


def _discard(index: dict[ServiceId, set[ExportId]] | dict[str, set[ExportId]], key: object,
             ident: ExportId) -> None:
    members = index.get(key)  # type: ignore[call-overload]
    if members is not None:
        members.discard(ident)
        if not members:
            del index[key]  # type: ignore[arg-type]


def listed(items: Iterable[tuple[str, bytes, int]]) -> dict[str, Listed]:
    """A listing as `resync` takes it, from (key, value, mod_revision) triples."""
    return {k: Listed(v, r) for k, v, r in items}
