"""Publisher and mirror against a real etcd: convergence, removal, resync, bad records, outages."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from federation.core.backoff import Backoff
from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from federation.core.records import ServiceExport, ServicePort
from federation.core.view import Event, MeshView
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient, Put, WatchEvent
from federation.registry.mirror import Mirror
from tests.util import HandPublisher, eventually, export, site

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


def publisher_for(etcd: EtcdProcess, name: str, exports: list[ServiceExport],
                  lease_file: Path | None = None) -> HandPublisher:
    return HandPublisher(EtcdClient([etcd.endpoint], timeout=3), KEYS, site(name), exports, ttl=3,
                         lease_file=lease_file, backoff=fast_backoff())


def services_of(view: MeshView) -> set[tuple[str, str, str]]:
    return set(view.exports)


def described(event: Event) -> tuple[str, str]:
    """(event type, export or site name)"""
    name = event.export.name if hasattr(event, "export") else event.site.name  # type: ignore[union-attr]
    return type(event).__name__, name


async def test_two_sites_see_each_other_and_removal_propagates(etcd: EtcdProcess) -> None:
    pub_a = publisher_for(etcd, "east", [export("east", "web")])
    pub_b = publisher_for(etcd, "west", [export("west", "db", ports=(ServicePort("pg", 5432),))])
    mir_a, mir_b = mirror_for(etcd), mirror_for(etcd)
    async with running(("pa", pub_a.run), ("pb", pub_b.run), ("ma", mir_a.run), ("mb", mir_b.run)):
        want = {("east", "shop", "web"), ("west", "shop", "db")}
        await eventually(lambda: services_of(mir_a.mesh.get()) == want and services_of(mir_b.mesh.get()) == want,
                         what="both mirrors to hold both exports")
        assert set(mir_a.mesh.get().sites) == {"east", "west"}
        pub_a.set_exports([])
        await eventually(lambda: services_of(mir_b.mesh.get()) == {("west", "shop", "db")}, what="removal in west")


async def test_unchanged_exports_write_nothing(etcd: EtcdProcess) -> None:
    exports = [export("east", "web")]
    pub = publisher_for(etcd, "east", exports)
    client = EtcdClient([etcd.endpoint])
    async with running(("p", pub.run)):
        async with asyncio.timeout(10):
            await pub.settled.wait()
        before, rev = await client.get_prefix(KEYS.root())
        assert len(before) == 2  # site record + one export
        pub.set_exports(list(exports))
        pub.set_exports(list(exports))
        assert not pub.settled.is_set()
        async with asyncio.timeout(10):
            await pub.settled.wait()  # the publisher looked again and found nothing to write
        after, rev_after = await client.get_prefix(KEYS.root())
    await client.close()
    assert rev_after == rev  # etcd's revision grows with every write, whatever the key
    assert {k: v.mod_revision for k, v in after.items()} == {k: v.mod_revision for k, v in before.items()}


def etcdctl(etcd: EtcdProcess, *args: str) -> str:
    out = subprocess.run(["etcdctl", f"--endpoints={etcd.endpoint}", *args], check=True, capture_output=True,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, timeout=20)
    return out.stdout.decode()


async def test_a_watch_that_hits_a_compacted_revision_resyncs_at_once_with_only_the_difference(
    etcd: EtcdProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """The mirror lists, then falls behind before its watch starts (its task held up in a subscriber); meanwhile
    one export changes, one goes, one appears and history is compacted past the revision the watch asks for.
    etcd answers the watch with a compaction; the mirror lists again at once and emits exactly the difference."""
    client = EtcdClient([etcd.endpoint])
    await client.commit([
        Put(KEYS.site("east"), encode_site(site("east"))),
        Put(KEYS.service("east", "shop", "web"), encode_export(export("east", "web"))),
        Put(KEYS.service("east", "shop", "api"), encode_export(export("east", "api"))),
    ])
    await client.close()
    # A backoff no test waits out: only the zero-delay resync of a compacted watch can finish in time.
    mirror = Mirror(EtcdClient([etcd.endpoint], timeout=3), KEYS, backoff=Backoff(base=600, cap=600),
                    probe_interval=0.5, probe_timeout=1.0)
    batches: list[list[Event]] = []
    listed: list[int] = []

    def behind(view: MeshView, events: list[Event]) -> None:
        batches.append(list(events))
        if len(listed) == 0:
            listed.append(view.revision)
            # Synchronous, so the mirror's watch cannot start before the compaction: it is behind by 3.
            etcdctl(etcd, "put", KEYS.service("east", "shop", "web"),
                    encode_export(export("east", "web", addresses=("127.0.0.11",))).decode())
            etcdctl(etcd, "del", KEYS.service("east", "shop", "api"))
            etcdctl(etcd, "put", KEYS.service("east", "shop", "new"), encode_export(export("east", "new")).decode())
            header = json.loads(etcdctl(etcd, "get", "--prefix", "/", "--limit=1", "-w", "json"))["header"]
            etcdctl(etcd, "compact", str(header["revision"]))

    mirror.subscribe(behind)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="federation.registry.mirror")
    async with running(("m", mirror.run)):
        await eventually(lambda: mirror.sessions == 2 and not mirror.stale, 10, "the resync after the compaction")
        assert mirror.mesh.get().revision == listed[0] + 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "federation.registry.mirror"]
    assert len(warnings) == 1, warnings
    assert f"revision compacted below {listed[0] + 3}; resyncing in 0.0s" in warnings[0]
    initial, *rest = batches
    assert sorted(map(described, initial)) == [("ServiceAdded", "api"), ("ServiceAdded", "web"), ("SiteAdded", "east")]
    changes = sorted(described(e) for batch in rest for e in batch)
    assert changes == [("ServiceAdded", "new"), ("ServiceChanged", "web"), ("ServiceRemoved", "api")]
    assert set(mirror.mesh.get().exports) == {("east", "shop", "web"), ("east", "shop", "new")}


async def test_malformed_record_is_skipped_with_reason(etcd: EtcdProcess, caplog: pytest.LogCaptureFixture) -> None:
    pub = publisher_for(etcd, "east", [export("east", "web")])
    mirror = mirror_for(etcd)
    caplog.set_level(logging.WARNING)
    async with running(("p", pub.run), ("m", mirror.run)):
        await eventually(lambda: len(mirror.mesh.get().exports) == 1, what="first export")
        bad_key = KEYS.service("rogue", "shop", "web")
        subprocess.run(["etcdctl", f"--endpoints={etcd.endpoint}", "put", bad_key, '{"schema":1,"kind":"Service'],
                       check=True, capture_output=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        pub.set_exports([export("east", "web"), export("east", "api")])
        await eventually(lambda: len(mirror.mesh.get().exports) == 2, what="valid records still flowing")
        assert mirror.catalog.rejected[bad_key].startswith("value is not JSON")
    assert any(bad_key in r.getMessage() and "not JSON" in r.getMessage() for r in caplog.records)


def restarts(mirror: Mirror) -> float:
    return float(mirror._metrics.watch_restarts._value.get())


async def test_etcd_outage_keeps_state_deletes_nothing_and_converges(etcd: EtcdProcess) -> None:
    pub_a = publisher_for(etcd, "east", [export("east", "web")])
    pub_b = publisher_for(etcd, "west", [export("west", "db")])
    mir_a, mir_b = mirror_for(etcd), mirror_for(etcd)
    events: list[Event] = []
    want = {("east", "shop", "web"), ("west", "shop", "db")}
    client = EtcdClient([etcd.endpoint])
    async with running(("pa", pub_a.run), ("pb", pub_b.run), ("ma", mir_a.run), ("mb", mir_b.run)):
        await eventually(lambda: services_of(mir_a.mesh.get()) == want == services_of(mir_b.mesh.get()), what="sync")
        await eventually(lambda: pub_a.settled.is_set() and pub_b.settled.is_set(), what="publishers settled")
        before, rev = await client.get_prefix(KEYS.root())
        await client.close()
        for m in (mir_a, mir_b):
            m.subscribe(lambda _view, evs: events.extend(evs))
        etcd.stop()
        await eventually(lambda: mir_a.stale and mir_b.stale, what="mirrors to notice the outage")
        # Each mirror fails to reconnect a few times, each publisher's keepalive fails; what they serve stays.
        tried = restarts(mir_a), restarts(mir_b)
        await eventually(lambda: restarts(mir_a) >= tried[0] + 3 and restarts(mir_b) >= tried[1] + 3,
                         what="three failed reconnects each")
        await eventually(lambda: not pub_a.settled.is_set() and not pub_b.settled.is_set(),
                         what="the publishers to notice the outage")
        assert services_of(mir_a.mesh.get()) == want == services_of(mir_b.mesh.get())
        etcd.start()
        await eventually(lambda: not mir_a.stale and not mir_b.stale, what="mirrors to reconnect")
        await eventually(lambda: pub_a.settled.is_set() and pub_b.settled.is_set(), what="publishers back")
        after, _ = await client.get_prefix(KEYS.root())
        # Nothing was deleted or rewritten in etcd: every key keeps its revisions, no delete in the history.
        assert {k: (v.create_revision, v.mod_revision, v.lease) for k, v in after.items()} == {
            k: (v.create_revision, v.mod_revision, v.lease) for k, v in before.items()}
        async with asyncio.timeout(10):
            history = [e async for e in until_now(client, rev + 1)]
        assert history == []
        assert events == []  # and no mirror told its subscribers of a removal (or anything else)

        pub_a.set_exports([export("east", "web"), export("east", "api")])
        want2 = want | {("east", "shop", "api")}
        await eventually(lambda: services_of(mir_a.mesh.get()) == want2 == services_of(mir_b.mesh.get()), what="converge")
        kvs, _ = await client.get_prefix(KEYS.root())
        assert len(kvs) == 5  # two site records, three exports: nothing duplicated
        assert [type(e).__name__ for e in events] == ["ServiceAdded", "ServiceAdded"]  # one per mirror
    await client.close()


async def until_now(client: EtcdClient, start: int) -> AsyncIterator[WatchEvent]:
    """Every event under the registry root from revision `start` to the current one."""
    now = await client.revision()
    if start > now:
        return
    async for event in client.watch_prefix(KEYS.root(), start):
        yield event
        if event.revision >= now:
            return


async def test_silent_etcd_is_noticed_and_mirror_recovers(etcd: EtcdProcess) -> None:
    pub = publisher_for(etcd, "east", [export("east", "web")])
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
        pub.set_exports([export("east", "web"), export("east", "api")])
        await eventually(lambda: len(mirror.mesh.get().exports) == 2, what="changes flow again")
