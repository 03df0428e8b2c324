"""The lease keepalive runs on its own thread: a blocked event loop does not let the site expire, and a
lease in danger is said before it expires."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from federation.core.keys import Keys
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from tests.util import HandPublisher, eventually, export, site

KEYS = Keys()


async def test_a_loop_blocked_for_twice_the_ttl_keeps_the_lease_and_the_records(etcd: EtcdProcess) -> None:
    pub = HandPublisher(EtcdClient([etcd.endpoint], timeout=2), KEYS, site("east"), [export("east", "web")], ttl=2)
    task = asyncio.create_task(pub.run(), name="publisher")
    client = EtcdClient([etcd.endpoint])
    try:
        await eventually(lambda: pub.settled.is_set(), 10, "the site published")
        before = await client.get(KEYS.site("east"))
        assert before is not None
        time.sleep(5)  # the point: a loop too busy to run anything for 2.5 lease TTLs
        after = await client.get(KEYS.site("east"))
        assert after is not None, "the site record expired while the loop was blocked"
        assert (after.lease, after.mod_revision) == (before.lease, before.mod_revision)
        assert pub.keeper.remaining() > 0
        assert pub.keeper.rtt < 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_failing_keepalives_are_said_before_the_lease_expires(
        etcd: EtcdProcess, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    pub = HandPublisher(EtcdClient([etcd.endpoint], timeout=1), KEYS, site("east"), [], ttl=4)
    task = asyncio.create_task(pub.run(), name="publisher")
    caplog.set_level(logging.WARNING, logger="federation.registry.leasekeeper")
    try:
        await eventually(lambda: pub.settled.is_set(), 10, "the site published")
        etcd.pause()
        try:
            await eventually(lambda: any("expires in" in r.getMessage() for r in caplog.records), 10,
                             "a warning about the lease")
            assert 0 < pub.keeper.remaining() < 2 + 0.5
            assert pub.keeper.link.reachable is False
        finally:
            etcd.resume()
        await eventually(lambda: pub.keeper.link.reachable is True, 15, "keepalives working again")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
