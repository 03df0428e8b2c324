"""Publisher and mirror against a real etcd: convergence, removal, resync, bad records, outages."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from federation.core.backoff import Backoff
from federation.core.keys import Keys
from federation.core.records import ServiceExport, ServicePort
from federation.core.view import Event, MeshView
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.mirror import Mirror
from federation.registry.publisher import Publisher
from federation.runtime.values import Value
from tests.util import eventually, export, site

KEYS = Keys()


def fast_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.5)


@asynccontextmanager
async def running(*coros_named: tuple[str, Callable[[], object]]) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(fn(), name=name) for name, fn in coros_named]  # type: ignore[arg-type]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def mirror_for(etcd: EtcdProcess, **kw: object) -> Mirror:
    return Mirror(EtcdClient([etcd.endpoint], timeout=3), KEYS, backoff=fast_backoff(), probe_interval=0.5,
                  probe_timeout=1.0, **kw)  # type: ignore[arg-type]


def publisher_for(etcd: EtcdProcess, name: str, exports: Value[tuple[ServiceExport, ...]],
                  lease_file: Path | None = None) -> Publisher:
    return Publisher(EtcdClient([etcd.endpoint], timeout=3), KEYS, Value(site(name)), exports, ttl=3,
                     lease_file=lease_file, backoff=fast_backoff())


def exports_of(*exports: ServiceExport) -> Value[tuple[ServiceExport, ...]]:
    return Value(tuple(exports))


def services_of(view: MeshView) -> set[tuple[str, str, str]]:
    return set(view.exports)


async def test_two_sites_see_each_other_and_removal_propagates(etcd: EtcdProcess) -> None:
    pub_a = publisher_for(etcd, "east", ex_east := exports_of(export("east", "web")))
    pub_b = publisher_for(etcd, "west", exports_of(export("west", "db", ports=(ServicePort("pg", 5432),))))
    mir_a, mir_b = mirror_for(etcd), mirror_for(etcd)
    async with running(("pa", pub_a.run), ("pb", pub_b.run), ("ma", mir_a.run), ("mb", mir_b.run)):
        want = {("east", "shop", "web"), ("west", "shop", "db")}
        await eventually(lambda: services_of(mir_a.mesh.get()) == want and services_of(mir_b.mesh.get()) == want,
                         what="both mirrors to hold both exports")
        assert set(mir_a.mesh.get().sites) == {"east", "west"}
        ex_east.set(())
        await eventually(lambda: services_of(mir_b.mesh.get()) == {("west", "shop", "db")}, what="removal in west")


async def test_unchanged_exports_write_nothing(etcd: EtcdProcess) -> None:
    exports = exports_of(export("east", "web"))
    pub = publisher_for(etcd, "east", exports)
    async with running(("p", pub.run)):
        await asyncio.wait_for(pub.published.wait(), 10)
        first = pub.writes
        exports.set(tuple(exports.get()))
        exports.set((export("east", "web"),))
        await asyncio.sleep(0.3)
        assert pub.writes == first == 2  # site record + one export


async def test_resync_after_compaction_emits_only_the_difference(etcd: EtcdProcess) -> None:
    pub = publisher_for(etcd, "east", ex_east := exports_of(export("east", "web"), export("east", "api")))
    mirror = mirror_for(etcd)
    events: list[Event] = []
    mirror.subscribe(lambda _view, evs: events.extend(evs))
    async with running(("p", pub.run)):
        async with running(("m", mirror.run)):
            await eventually(lambda: len(mirror.mesh.get().exports) == 2, what="two exports")
        # The mirror is cut off; meanwhile one export changes, one goes, one appears, and history is compacted.
        events.clear()
        ex_east.set((export("east", "web", addresses=("127.0.0.11",)), export("east", "new"),))
        client = EtcdClient([etcd.endpoint])
        await eventually(lambda: pub.writes >= 5, what="publisher writes")
        await client.compact(await client.revision())
        await client.close()
        async with running(("m", mirror.run)):
            await eventually(lambda: mirror.sessions >= 2 and not mirror.stale and len(events) >= 3,
                             what="resync after compaction")
            await asyncio.sleep(0.2)
    kinds = sorted((type(e).__name__, e.export.name) for e in events)  # type: ignore[union-attr]
    assert kinds == [("ServiceAdded", "new"), ("ServiceChanged", "web"), ("ServiceRemoved", "api")]


async def test_malformed_record_is_skipped_with_reason(etcd: EtcdProcess, caplog: pytest.LogCaptureFixture) -> None:
    pub = publisher_for(etcd, "east", ex_east := exports_of(export("east", "web")))
    mirror = mirror_for(etcd)
    caplog.set_level(logging.WARNING)
    async with running(("p", pub.run), ("m", mirror.run)):
        await eventually(lambda: len(mirror.mesh.get().exports) == 1, what="first export")
        bad_key = KEYS.service("rogue", "shop", "web")
        subprocess.run(["etcdctl", f"--endpoints={etcd.endpoint}", "put", bad_key, '{"schema":1,"kind":"Service'],
                       check=True, capture_output=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        ex_east.set((export("east", "web"), export("east", "api"),))
        await eventually(lambda: len(mirror.mesh.get().exports) == 2, what="valid records still flowing")
        assert mirror.catalog.rejected[bad_key].startswith("value is not JSON")
    assert any(bad_key in r.getMessage() and "not JSON" in r.getMessage() for r in caplog.records)


async def test_etcd_outage_keeps_state_and_converges(etcd: EtcdProcess) -> None:
    pub_a = publisher_for(etcd, "east", ex_east := exports_of(export("east", "web")))
    pub_b = publisher_for(etcd, "west", exports_of(export("west", "db")))
    mir_a, mir_b = mirror_for(etcd), mirror_for(etcd)
    want = {("east", "shop", "web"), ("west", "shop", "db")}
    async with running(("pa", pub_a.run), ("pb", pub_b.run), ("ma", mir_a.run), ("mb", mir_b.run)):
        await eventually(lambda: services_of(mir_a.mesh.get()) == want == services_of(mir_b.mesh.get()), what="sync")
        etcd.stop()
        await eventually(lambda: mir_a.stale and mir_b.stale, what="mirrors to notice the outage")
        await asyncio.sleep(3)
        assert services_of(mir_a.mesh.get()) == want == services_of(mir_b.mesh.get())  # nothing deleted locally
        etcd.start()
        await eventually(lambda: not mir_a.stale and not mir_b.stale, what="mirrors to reconnect")
        ex_east.set((export("east", "web"), export("east", "api"),))
        want2 = want | {("east", "shop", "api")}
        await eventually(lambda: services_of(mir_a.mesh.get()) == want2 == services_of(mir_b.mesh.get()), what="converge")
        client = EtcdClient([etcd.endpoint])
        kvs, _ = await client.get_prefix(KEYS.root())
        await client.close()
        assert len(kvs) == 5  # two site records, three exports: nothing duplicated


async def test_silent_etcd_is_noticed_and_mirror_recovers(etcd: EtcdProcess) -> None:
    pub = publisher_for(etcd, "east", ex_east := exports_of(export("east", "web")))
    mirror = mirror_for(etcd)
    async with running(("p", pub.run), ("m", mirror.run)):
        await eventually(lambda: len(mirror.mesh.get().exports) == 1, what="sync")
        etcd.pause()  # a partition: the server is there but says nothing
        try:
            await eventually(lambda: mirror.stale, what="the probe to notice the silence")
            await asyncio.sleep(2)
            assert len(mirror.mesh.get().exports) == 1
        finally:
            etcd.resume()
        await eventually(lambda: not mirror.stale, what="recovery after the partition")
        ex_east.set((export("east", "web"), export("east", "api"),))
        await eventually(lambda: len(mirror.mesh.get().exports) == 2, what="changes flow again")
