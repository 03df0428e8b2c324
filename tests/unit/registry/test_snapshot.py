"""The registry snapshot: its file format, the size bound, and files it must refuse (pure, no loop)."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core.catalog import Catalog, Listed
from federation.core.codec import encode_export, encode_site
from federation.core.errors import RecordError
from federation.core.keys import Keys
from federation.registry.snapshot import RawListing, SnapshotFile, decode, encode
from tests.util import export, site

KEYS = Keys()
PREFIX = KEYS.root()
MIB = 1024 * 1024


def listing() -> dict[str, Listed]:
    return {
        KEYS.site("east"): Listed(encode_site(site("east")), 5),
        KEYS.service("east", "shop", "web"): Listed(encode_export(export("east", "web")), 6),
        KEYS.mesh("vips", "services", "shop", "web"): Listed(b'{"any": "bytes \xff\x00"}', 7),
    }


def test_a_snapshot_reads_back_exactly_and_a_catalog_built_from_it_equals_the_live_one() -> None:
    items = {k: (v.value, v.mod_revision) for k, v in listing().items()}
    saved = decode(encode(items, 9, PREFIX, 1234.5), PREFIX, MIB)
    assert saved.listing == listing()
    assert (saved.revision, saved.saved_at) == (9, 1234.5)
    live, restored = Catalog(KEYS), Catalog(KEYS)
    live.resync(listing(), 9)
    restored.resync(saved.listing, saved.revision)
    assert restored.view().sites == live.view().sites
    assert dict(restored.view().exports) == dict(live.view().exports)


@pytest.mark.parametrize(("doc", "reason"), [
    ({"format": "other", "version": 1}, "not a meshfed registry snapshot"),
    ({"format": "meshfed-registry-snapshot", "version": 2, "prefix": PREFIX}, "format version 2, this agent reads 1"),
    ({"format": "meshfed-registry-snapshot", "version": 1, "prefix": "/other/"}, "snapshot of prefix '/other/'"),
    ({"format": "meshfed-registry-snapshot", "version": 1, "prefix": PREFIX, "revision": 1}, "malformed snapshot"),
])
def test_a_snapshot_of_another_kind_version_or_mesh_is_refused_with_the_reason(doc: dict, reason: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(RecordError, match=reason):
        decode(gzip.compress(json.dumps(doc).encode()), PREFIX, MIB)


def test_a_file_that_inflates_beyond_the_bound_is_refused_without_inflating_it_all() -> None:
    bomb = gzip.compress(b" " * (8 * MIB))  # about 8 KiB on disk
    with pytest.raises(RecordError, match=r"larger than registry\.snapshot_max_bytes"):
        decode(bomb, PREFIX, MIB)


@given(st.binary(max_size=2048))
def test_hostile_bytes_give_a_record_error_and_nothing_else(data: bytes) -> None:
    try:
        decode(data, PREFIX, MIB)
    except RecordError:
        pass


def test_the_raw_listing_follows_puts_and_deletes_and_keeps_nothing_over_its_bound() -> None:
    raw = RawListing(max_bytes=1000)
    raw.replace(listing(), 9)
    version = raw.changed.version
    raw.put(KEYS.service("east", "shop", "api"), b"x" * 10, 10)
    raw.delete(KEYS.service("east", "shop", "web"), 11)
    assert KEYS.service("east", "shop", "web") not in raw.items
    assert raw.items[KEYS.service("east", "shop", "api")] == (b"x" * 10, 10)
    assert raw.size == sum(len(k) + len(v) for k, (v, _) in raw.items.items())
    assert raw.changed.version == version + 2
    raw.put(KEYS.service("east", "shop", "big"), b"x" * 2000, 12)  # over the bound: nothing kept
    assert raw.over
    assert not raw.items
    raw.replace(listing(), 13)  # a later listing that fits is kept again
    assert not raw.over
    assert set(raw.items) == set(listing())


def test_the_file_is_private_written_only_when_changed_and_removed_when_over_the_bound(tmp_path: Path) -> None:
    raw = RawListing(max_bytes=MIB)
    snap = SnapshotFile(tmp_path / "registry.snapshot", PREFIX, raw)
    assert not snap.write()  # nothing listed yet: nothing to write
    raw.replace(listing(), 9)
    assert snap.write()
    assert (tmp_path / "registry.snapshot").stat().st_mode & 0o777 == 0o600
    assert not snap.write()
    loaded = snap.load()
    assert loaded is not None
    assert loaded.listing == listing()
    raw.max_bytes = 10
    raw.put(KEYS.service("east", "shop", "api"), b"x", 10)
    assert not snap.write()
    assert not (tmp_path / "registry.snapshot").exists()
    assert snap.load() is None


def test_an_unreadable_file_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "registry.snapshot").write_bytes(b"not gzip")
    assert SnapshotFile(tmp_path / "registry.snapshot", PREFIX, RawListing(MIB)).load() is None


def test_a_snapshot_of_chunked_exports_restores_them_whole() -> None:
    from federation.core.records import Endpoint
    from federation.registry.publishing import desired_records

    big = dataclasses.replace(export("east", "web"), endpoints=tuple(Endpoint((f"10.0.0.{i}",)) for i in range(1, 60)))
    records = desired_records(KEYS, site("east"), [big], {}, 1.0, chunk_size=10)
    assert sum("/endpoints/" in k for k in records) == 6
    saved = decode(encode({k: (v, 3) for k, v in records.items()}, 3, PREFIX, 1.0), PREFIX, MIB)
    restored = Catalog(KEYS)
    restored.resync(saved.listing, saved.revision)
    assert sorted(restored.view().exports[("east", "shop", "web")].endpoints, key=repr) == sorted(big.endpoints, key=repr)
