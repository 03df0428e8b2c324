"""The catalog: a pure, synchronous core fed with etcd puts, deletes and resyncs.

It turns raw key/values into typed records, emits only real differences as typed events, reports
rejected records (never raises on remote input) and keeps the MCS conflict rule applied incrementally.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from federation.core.codec import decode_export, decode_site
from federation.core.errors import RecordError
from federation.core.keys import Keys, ServiceKey, SiteKey
from federation.core.records import ServiceExport, Site
from federation.core.view import (
    Event,
    ExportId,
    FederatedService,
    MeshView,
    ServiceAdded,
    ServiceChanged,
    ServiceRemoved,
    SiteAdded,
    SiteChanged,
    SiteRemoved,
    resolve,
)


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


# ---------------------------------------------------------------- the catalog


class Catalog:
    """Typed state of every valid record under one key prefix, updated by puts, deletes and resyncs."""

    def __init__(self, keys: Keys) -> None:
        self._keys = keys
        self._raw: dict[str, bytes] = {}
        self._sites: dict[str, Site] = {}
        self._exports: dict[ExportId, ServiceExport] = {}
        self._rejected: dict[str, str] = {}
        self.revision = 0
        # Resolved services kept across snapshots: a new view re-resolves only the services touched since.
        self._by_service: dict[tuple[str, str], set[ExportId]] = {}
        self._resolved: dict[tuple[str, str], FederatedService] = {}
        self._dirty: set[tuple[str, str]] = set()

    # -- inputs

    def put(self, key: str, value: bytes, revision: int = 0) -> Outcome:
        """Apply one put of `key`."""
        out = Outcome()
        self.revision = max(self.revision, revision)
        if self._raw.get(key) == value:
            return out
        self._raw[key] = value
        self._apply(key, value, out)
        return out

    def delete(self, key: str, revision: int = 0) -> Outcome:
        """Apply one delete of `key`."""
        out = Outcome()
        self.revision = max(self.revision, revision)
        if self._raw.pop(key, None) is None:
            return out
        self._rejected.pop(key, None)
        self._remove(key, out)
        return out

    def resync(self, kvs: Mapping[str, bytes], revision: int) -> Outcome:
        """Replace the whole state with a fresh listing; emit only what really differs."""
        out = Outcome()
        for key in sorted(set(self._raw) - set(kvs)):
            sub = self.delete(key)
            out.events += sub.events
        for key, value in sorted(kvs.items()):
            sub = self.put(key, value)
            out.events += sub.events
            out.rejected += sub.rejected
        self.revision = revision
        return out

    # -- outputs

    def view(self) -> MeshView:
        """An immutable snapshot of the current state, its services already resolved (incrementally)."""
        for key in self._dirty:
            members = [self._exports[i] for i in self._by_service.get(key, ()) if i[0] in self._sites]
            if members:
                self._resolved[key] = resolve(members)
            else:
                self._resolved.pop(key, None)
        self._dirty.clear()
        return MeshView(
            sites=MappingProxyType(dict(self._sites)),
            exports=MappingProxyType(dict(self._exports)),
            revision=self.revision,
            _memo={"services": dict(sorted(self._resolved.items()))},
        )

    @property
    def rejected(self) -> Mapping[str, str]:
        """Keys currently holding an invalid record, with the reason."""
        return MappingProxyType(self._rejected)

    def __len__(self) -> int:
        return len(self._sites) + len(self._exports)

    # -- private

    def _apply(self, key: str, value: bytes, out: Outcome) -> None:
        try:
            parsed = self._keys.parse(key)
            if parsed is None:
                return
            if isinstance(parsed, SiteKey):
                site = decode_site(parsed, value)
                self._rejected.pop(key, None)
                old_site = self._sites.get(site.name)
                self._sites[site.name] = site
                if old_site is None:
                    self._touch_site(site.name)
                    out.events.append(SiteAdded(site))
                elif old_site != site:
                    out.events.append(SiteChanged(site, old_site))
                return
            export = decode_export(parsed, value)
            self._rejected.pop(key, None)
            ident = (parsed.site, parsed.namespace, parsed.name)
            old_export = self._exports.get(ident)
            self._exports[ident] = export
            self._by_service.setdefault(export.service, set()).add(ident)
            self._dirty.add(export.service)
            if old_export is None:
                out.events.append(ServiceAdded(export))
            elif old_export != export:
                out.events.append(ServiceChanged(export, old_export))
        except RecordError as exc:
            self._rejected[key] = str(exc)
            out.rejected.append(Rejected(key, str(exc)))
            # The key no longer holds a valid record: a fresh reader would not see one either.
            self._remove(key, out)

    def _remove(self, key: str, out: Outcome) -> None:
        try:
            parsed = self._keys.parse(key)
        except RecordError:
            return
        if isinstance(parsed, SiteKey):
            site = self._sites.pop(parsed.site, None)
            if site is not None:
                self._touch_site(site.name)
                out.events.append(SiteRemoved(site))
        elif isinstance(parsed, ServiceKey):
            ident = (parsed.site, parsed.namespace, parsed.name)
            export = self._exports.pop(ident, None)
            if export is not None:
                members = self._by_service.get(export.service)
                if members is not None:
                    members.discard(ident)
                    if not members:
                        del self._by_service[export.service]
                self._dirty.add(export.service)
                out.events.append(ServiceRemoved(export))

    def _touch_site(self, site: str) -> None:
        """A site record came or went: every service it exports counts again, or no longer."""
        self._dirty.update(e.service for i, e in self._exports.items() if i[0] == site)
