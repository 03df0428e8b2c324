"""Paginated, revision-pinned listing (issue 11) against a real etcd: a page size of 2 crosses many pages, and
writes or a compaction between two pages never give the reader a listing that mixes revisions."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from federation.core.backoff import Backoff
from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import Compacted, Delete, EtcdClient, Put
from federation.registry.mirror import Mirror
from tests.util import eventually, export, site

KEYS = Keys()
T = TypeVar("T")


def etcdctl(etcd: EtcdProcess, *args: str) -> str:
    out = subprocess.run(["etcdctl", f"--endpoints={etcd.endpoint}", *args], check=True, capture_output=True,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, timeout=20)
    return out.stdout.decode()


class BetweenPages(EtcdClient):
    """A real client that runs `between` (real writes through another client) after its `at`-th request."""

    def __init__(self, endpoint: str, at: int, between: Callable[[], Awaitable[None]]) -> None:
        super().__init__([endpoint], timeout=3)
        self.requests = 0
        self._at, self._between = at, between

    async def _again(self, call: Callable[[Any], Awaitable[T]]) -> T:
        out = await super()._again(call)
        self.requests += 1
        if self.requests == self._at:
            await self._between()
        return out


async def _mesh(etcd: EtcdProcess, services: int) -> dict[str, bytes]:
    values = {KEYS.site("east"): encode_site(site("east"))}
    values.update({KEYS.service("east", "shop", f"svc{i:02d}"): encode_export(export("east", f"svc{i:02d}"))
                   for i in range(services)})
    client = EtcdClient([etcd.endpoint])
    await client.commit([Put(k, v) for k, v in values.items()])
    await client.close()
    return values


async def test_a_listing_in_pages_of_two_is_one_snapshot_at_its_first_revision(etcd: EtcdProcess) -> None:
    values = await _mesh(etcd, 11)
    writer = EtcdClient([etcd.endpoint])

    async def write() -> None:  # after the first page: a change, a removal and a new key
        await writer.commit([Put(KEYS.service("east", "shop", "svc09"),
                                 encode_export(export("east", "svc09", addresses=("127.0.0.99",)))),
                             Delete(KEYS.service("east", "shop", "svc10")),
                             Put(KEYS.service("east", "shop", "zzz"), encode_export(export("east", "zzz")))])

    before = await writer.revision()
    reader = BetweenPages(etcd.endpoint, 1, write)
    try:
        kvs, revision = await reader.get_prefix(KEYS.root(), page=2)
    finally:
        await reader.close()
        await writer.close()
    assert reader.requests == 6  # 12 keys, 2 a page: every page was read
    assert revision == before
    assert {k: kv.value for k, kv in kvs.items()} == values


async def test_a_compaction_between_pages_fails_the_listing_and_the_mirror_lists_again(
        etcd: EtcdProcess, caplog: pytest.LogCaptureFixture) -> None:
    await _mesh(etcd, 9)
    writer = EtcdClient([etcd.endpoint])
    moved = export("east", "svc00", addresses=("127.0.0.99",))

    async def compact() -> None:  # the listing's revision is compacted away before its next page
        await writer.commit([Put(KEYS.service("east", "shop", "svc00"), encode_export(moved))])
        etcdctl(etcd, "compact", str(await writer.revision()))

    reader = BetweenPages(etcd.endpoint, 1, compact)
    try:
        with pytest.raises(Compacted):
            await reader.get_prefix(KEYS.root(), page=2)
        # The mirror, listing in pages of two, meets a compaction after its first page and lists again at once
        # (a backoff no test waits out: only the zero-delay relisting of a compaction finishes in time).
        caplog.set_level(logging.WARNING, logger="federation.registry.mirror")
        client = BetweenPages(etcd.endpoint, 1, compact)
        mirror = Mirror(client, KEYS, backoff=Backoff(base=600, cap=600), page=2, probe_interval=5, probe_timeout=1)
        task = asyncio.create_task(mirror.run())
        try:
            await eventually(lambda: mirror.mesh.get().complete, 10, "the mirror's listing after the compaction")
            view = mirror.mesh.get()
            assert len(view.exports) == 9
            assert view.exports[("east", "shop", "svc00")] == moved
            assert view.revision == await writer.revision()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
        warnings = [r.getMessage() for r in caplog.records if r.name == "federation.registry.mirror"]
        assert any("revision compacted" in w and "resyncing in 0.0s" in w for w in warnings), warnings
    finally:
        await reader.close()
        await writer.close()
