"""The access log on the real data plane: egress and east-west gateway on loopback, real mTLS, an echo server.

Each relayed connection gets one JSON line on each side it crossed (west's egress, east's gateway) with
the bytes each way; a direct connection gets one at the egress; a failover counts its retries; sampling
and a full buffer drop lines (counted), and a writer that cannot write (a FIFO nobody reads) never holds
the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from federation.core.records import Gateway, Locality
from federation.core.workloads import Workloads
from federation.runtime.values import Value
from gateway.accesslog import AccessLog, AccessLogSettings
from gateway.egress import Egress
from gateway.settings import GatewaySettings
from tests.integration.test_egress import _closed_port, roundtrip
from tests.pkihelp import export, view
from tests.tunnelhelp import two_sites
from tests.util import eventually

KEY = ("ns", "echo", "tcp")


@asynccontextmanager
async def writing(alog: AccessLog) -> AsyncIterator[AccessLog]:
    task = asyncio.create_task(alog.run(), name="access-log")
    try:
        yield alog
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def counted(alog: AccessLog, result: str) -> float:
    return alog.lines.labels(result)._value.get()


async def test_a_tunnelled_connection_gets_a_line_at_the_egress_and_at_the_gateway(tmp_path: Path) -> None:
    west_log, east_log = AccessLog(AccessLogSettings(path=str(tmp_path / "west.log"))), \
        AccessLog(AccessLogSettings(path=str(tmp_path / "east.log")))
    async with two_sites(tmp_path) as s, writing(west_log), writing(east_log):
        assert s.gateway is not None
        s.gateway.accesslog = east_log  # the agent hands it to the constructor
        eg = Egress("west", s.mesh_value, s.west.client, s.west.bundle, GatewaySettings(pool_size=1),
                    registry=CollectorRegistry(), accesslog=west_log)
        eg.workloads = Value(Workloads({"127.0.0.1": "shop/web"}), name="workloads")  # the client's workload
        await eg.start()
        try:
            payloads = [b"a" * 10, b"b" * 70_000, b"c" * 3]
            for p in payloads:
                assert await roundtrip(eg.listeners()[KEY], p) == p
            await eventually(lambda: len(lines(tmp_path / "west.log")) == 3 and len(lines(tmp_path / "east.log")) == 3,
                             what="three lines on each side")
        finally:
            await eg.close()
    west, east = lines(tmp_path / "west.log"), lines(tmp_path / "east.log")
    assert [w["bytesUp"] for w in west] == [len(p) for p in payloads]
    assert [w["bytesDown"] for w in west] == [len(p) for p in payloads]
    assert [e["bytesUp"] for e in east] == [len(p) for p in payloads]  # client to service, on both sides
    assert [e["bytesDown"] for e in east] == [len(p) for p in payloads]
    w, e = west[0], east[0]
    assert set(w) == {"time", "source", "service", "port", "route", "site", "gateway", "bytesUp", "bytesDown",
                      "durationMs", "result", "retries", "identity"}
    assert w["identity"] == e["identity"] == "spiffe://mesh.example/site/west/ns/shop/sa/web"  # east: in west's scope
    assert (w["service"], w["port"], w["route"], w["site"], w["result"], w["retries"]) == \
        ("ns/echo", "tcp", "gateway", "east", "ok", 0)
    assert w["gateway"] == f"127.0.0.1:{s.gw_port}"
    assert w["source"].startswith("127.0.0.1:")
    assert w["time"].endswith("+00:00")
    assert w["durationMs"] >= 0
    echo_port = s.exports[0].endpoints[0].ports[0].port
    assert (e["route"], e["site"], e["gateway"], e["result"]) == ("inbound", "west", f"127.0.0.1:{echo_port}", "ok")
    assert counted(west_log, "written") == 3


async def test_a_direct_connection_and_a_failover_say_where_they_went(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        echo_port = s.exports[0].endpoints[0].ports[0].port
        north_port = await _closed_port()
        here = Locality("eu", "eu-1")
        base = s.view()
        sites = {**base.sites, "west": s.mesh.site("west", network="net-west", locality=here),
                 "near": s.mesh.site("near", network="net-west"),
                 "north": s.mesh.site("north", locality=here, gateways=(Gateway("gw", "127.0.0.1", north_port),))}
        mesh = Value(view(list(sites.values()), [*base.exports.values(), export("north", "ns", "echo", 7),
                                                 export("near", "ns", "local", 9, endpoint_ports=(echo_port,))]))
        alog = AccessLog(AccessLogSettings(path=str(tmp_path / "a.log")))
        eg = Egress("west", mesh, s.west.client, s.west.bundle, GatewaySettings(pool_size=0), accesslog=alog)
        await eg.start()
        try:
            async with writing(alog):
                assert await roundtrip(eg.listeners()[("ns", "local", "tcp")], b"direct") == b"direct"
                assert await roundtrip(eg.listeners()[KEY], b"failover") == b"failover"
                await eventually(lambda: len(lines(tmp_path / "a.log")) == 2, what="two lines")
        finally:
            await eg.close()
    direct, failover = lines(tmp_path / "a.log")
    assert (direct["route"], direct["site"], direct["gateway"], direct["retries"], direct["result"]) == \
        ("direct", "near", f"127.0.0.1:{echo_port}", 0, "ok")
    assert (direct["bytesUp"], direct["bytesDown"]) == (6, 6)
    assert (failover["route"], failover["site"], failover["retries"]) == ("gateway", "east", 1)  # north refused


async def test_sampling_keeps_a_share_and_a_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    draws = iter([0.1, 0.9] * 10)  # a sample of 0.5 keeps every other connection
    sampled = AccessLog(AccessLogSettings(path=str(tmp_path / "s.log"), sample=0.5), sample=lambda: next(draws))
    full = AccessLog(AccessLogSettings(path=str(tmp_path / "f.log"), buffer=2))  # its writer starts late
    async with two_sites(tmp_path) as s:
        for alog in (sampled, full):
            eg = Egress("west", s.mesh_value, s.west.client, s.west.bundle, GatewaySettings(pool_size=0),
                        accesslog=alog)
            await eg.start()
            try:
                if alog is sampled:
                    async with writing(alog):
                        for i in range(6):
                            assert await roundtrip(eg.listeners()[KEY], b"%d" % i) == b"%d" % i
                        await eventually(lambda: len(lines(tmp_path / "s.log")) == 3, what="every other line")
                else:
                    for i in range(5):
                        assert await roundtrip(eg.listeners()[KEY], b"%d" % i) == b"%d" % i
                    await eventually(lambda: counted(full, "dropped") == 3, what="three lines dropped")
                    async with writing(full):
                        await eventually(lambda: len(lines(tmp_path / "f.log")) == 2, what="the two kept lines")
            finally:
                await eg.close()
    assert [line["bytesUp"] for line in lines(tmp_path / "s.log")] == [1, 1, 1]
    assert counted(full, "written") == 2


async def test_a_writer_that_cannot_write_never_holds_the_loop(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    alog = AccessLog(AccessLogSettings(path=str(fifo), buffer=3))
    got: list[bytes] = []
    try:
        async with two_sites(tmp_path) as s, writing(alog):
            eg = Egress("west", s.mesh_value, s.west.client, s.west.bundle, GatewaySettings(pool_size=0),
                        accesslog=alog)
            await eg.start()
            try:
                # Nobody reads the pipe: the writer's thread blocks opening it; the loop relays on.
                for i in range(5):
                    async with asyncio.timeout(5):
                        assert await roundtrip(eg.listeners()[KEY], b"%d" % i) == b"%d" % i
                assert counted(alog, "dropped") == 2
            finally:
                await eg.close()
            reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
            reader.start()
            await eventually(lambda: counted(alog, "written") == 3, what="the buffered lines written")
    finally:
        if not got:  # unblock a writer still opening the pipe
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)
    reader.join(5)
    assert len(got[0].splitlines()) == 3


async def test_off_by_default_makes_no_line_and_no_task(tmp_path: Path) -> None:
    alog = AccessLog()
    assert not alog.enabled
    async with two_sites(tmp_path) as s:
        eg = Egress("west", s.mesh_value, s.west.client, s.west.bundle, GatewaySettings(pool_size=0), accesslog=alog)
        await eg.start()
        try:
            assert await roundtrip(eg.listeners()[KEY], b"x") == b"x"
        finally:
            await eg.close()
    assert alog._open == {}
    assert not alog._lines


