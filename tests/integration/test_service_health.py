"""Per-service active health and partition behaviour through real tunnels: real east-west gateways with
real TLS on loopback (tests/integration/policylab.py), west's egress and prober, a real etcd for partitions."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from federation.agent.gateways import status_warnings
from federation.cli.gateways import format_gateways
from federation.core.backoff import Backoff
from federation.core.keys import Keys
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.heartbeat import HeartbeatWriter, LagMeter
from federation.registry.mirror import Mirror
from federation.runtime.values import Value
from gateway.preamble import Preamble, Response, Role, Status
from gateway.probing import Prober
from gateway.settings import GatewaySettings
from tests.integration.policylab import EU1, Lab, NamedServer, lab, many, who
from tests.util import eventually

DOWN = ("east", "shop", "web")


def prober(it: Lab) -> Prober:
    assert it.egress is not None
    west = it.sites["west"]
    settings = Value(GatewaySettings(handshake_timeout=2.0, connect_timeout=1.0), name="gateway settings")
    return Prober("west", it.view_value, west.store.client, west.store.bundle, settings, it.registry,
                  reach=it.egress.reach, policies=it.policies)


@pytest.mark.timeout(60)
async def test_a_dead_endpoint_or_gateway_takes_its_site_out_within_5s_with_no_traffic_and_back_after(
        tmp_path: Path) -> None:
    async with lab(tmp_path) as it:
        east = NamedServer("east")
        await it.add("east", [east], EU1)
        await it.add("edge", [NamedServer("edge")], EU1)
        egress = await it.start_egress(EU1)
        p = prober(it)
        task = asyncio.create_task(p.service_probes.run(), name="service-probes")
        try:
            await eventually(lambda: getattr(p.service_probes.table.states.get(DOWN), "state", "") == "HEALTHY", what="east healthy")
            await east.close()  # no client at all from here on
            died = time.monotonic()
            await eventually(lambda: DOWN in egress.reach.services.get(), timeout=5.0, what="east out for shop/web")
            assert time.monotonic() - died < 5.0
            assert DOWN in egress.reach.avoid.get()  # what DNS answers last
            p._follow(it.view_value.get())  # the gateway targets, as a round of gateway probes would
            doc = {"site": "west", "gateways": p.document([("east", "gw")])}
            entry = doc["gateways"][0]["serviceHealth"]
            assert entry["unhealthy"] == 1
            assert entry["notHealthy"]["shop/web"]["state"] == "UNHEALTHY"
            assert "  east  shop/web  UNHEALTHY  no ready endpoint there" in format_gateways(doc)
            assert any(w.startswith("service shop/web at site east is left out of DNS answers and routes: ")
                       for w in status_warnings(p, {}, lambda _k: False, None))
            failed = it.attempts("gateway", "no_healthy_endpoint") + it.attempts("gateway", "refused")
            assert collections.Counter(await many(it.address, 20, parallel=4)) == {"edge": 20}
            assert it.attempts("gateway", "no_healthy_endpoint") + it.attempts("gateway", "refused") == failed
            it.set_policy("{}")  # the policy path too: east is not even tried (nor ejected)
            assert collections.Counter(await many(it.address, 20, parallel=4)) == {"edge": 20}
            assert it.attempts("gateway", "no_healthy_endpoint") + it.attempts("gateway", "refused") == failed
            await east.start()  # the same port
            await eventually(lambda: DOWN not in egress.reach.services.get(), timeout=6.0, what="east back")
            assert set(await many(it.address, 40, parallel=4)) == {"east", "edge"}
            gateway = it.sites["east"].gateway
            assert gateway is not None
            await gateway.close()  # a dead gateway, its endpoint alive: out again, with no client traffic
            died = time.monotonic()
            await eventually(lambda: DOWN in egress.reach.services.get(), timeout=5.0, what="east out again")
            assert time.monotonic() - died < 5.0
            assert p.service_probes.table.states[DOWN].reason.startswith("gateway gw unreachable: ")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.timeout(60)
async def test_a_gateway_from_before_health_queries_is_unknown_never_down(tmp_path: Path) -> None:
    async with lab(tmp_path) as it:
        site = await it.add("old", [NamedServer("old")], EU1)
        await it.start_egress(EU1)

        async def old_gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(64)  # the old codec refused an unknown message type: bad request, closed
            writer.write(Preamble(Role.SERVER).send(Response(Status.BAD_REQUEST, "bad request")))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(old_gateway, "127.0.0.1", 0, ssl=site.store.server)
        site.gateway_port = server.sockets[0].getsockname()[1]
        it.publish()
        p = prober(it)
        task = asyncio.create_task(p.service_probes.run(), name="service-probes")
        try:
            key = ("old", "shop", "web")
            await eventually(lambda: getattr(p.service_probes.table.states.get(key), "last", None) is not None, what="an answer")
            state = p.service_probes.table.states[key]
            assert (state.state, state.reason) == ("UNKNOWN", "the gateway does not answer health queries "
                                                   "(an older agent)")
            assert p.service_probes.metrics.answers.labels("old_gateway")._value.get() == 1
            await asyncio.sleep(1.5)  # a round that would have asked again (1 s interval): not for a minute
            assert p.service_probes.metrics.answers.labels("old_gateway")._value.get() == 1
            assert it.egress is not None
            assert not it.egress.reach.services.get()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()
            await server.wait_closed()


@pytest.mark.timeout(90)
async def test_partition_modes_with_a_stopped_etcd(tmp_path: Path, etcd: EtcdProcess) -> None:
    """A site whose heartbeats stop (the registry live) is left out by FailClosed, served by KeepServing.
    Then SIGSTOP of the test's own etcd: FailClosed refuses at once, StopAfter after `after`, KeepServing
    serves all along; all serve again once etcd is back."""
    lag = LagMeter(CollectorRegistry())
    mirror = Mirror(EtcdClient([etcd.endpoint], timeout=1), Keys(), probe_interval=0.3, probe_timeout=0.5,
                    backoff=Backoff(base=0.05, cap=0.3), lag=lag.take)
    writer = EtcdClient([etcd.endpoint], timeout=1)
    tasks = [asyncio.create_task(mirror.run(), name="mirror")]
    async with lab(tmp_path) as it:
        await it.add("east", [NamedServer("east")], EU1)
        await it.add("edge", [NamedServer("edge")], EU1)
        egress = await it.start_egress(EU1)
        egress.partition.staleness, egress.partition.site_staleness = mirror.staleness, lag.stale_for
        try:
            lease = await writer.grant(30)
            beats = {s: asyncio.create_task(HeartbeatWriter(writer, Keys(), s, 0.2, lease=lambda: lease).run(),
                                            name=f"heartbeat-{s}") for s in ("east", "edge")}
            tasks.extend(beats.values())
            await eventually(lambda: not mirror.stale and {"east", "edge"} <= set(lag.last), what="heartbeats")
            it.set_policy("partition: {mode: FailClosed}")
            assert set(await many(it.address, 20, parallel=4)) == {"east", "edge"}
            beats["east"].cancel()  # east's agent cut off from etcd: its records go stale, the registry answers
            await eventually(lambda: lag.stale_for("east") > 0, what="east's heartbeat overdue")
            assert collections.Counter(await many(it.address, 20, parallel=4)) == {"edge": 20}
            it.set_policy("{}")  # KeepServing: east's last known endpoints serve
            assert set(await many(it.address, 20, parallel=4)) == {"east", "edge"}
            etcd.pause()
            await eventually(lambda: mirror.stale, what="the mirror to see etcd gone")
            assert await who(it.address) != ""  # KeepServing, the default
            it.set_policy("partition: {mode: FailClosed}")
            assert await who(it.address) == ""  # the whole service now, not one site
            assert egress.partition.refused.labels("FailClosed")._value.get() == 1
            it.set_policy("partition: {mode: StopAfter, after: 60s}")
            assert await who(it.address) != ""  # stale for less than a minute
            it.set_policy("partition: {mode: StopAfter, after: 1s}")
            await eventually(lambda: mirror.staleness() >= 1.0, what="a second stale")
            assert await who(it.address) == ""
            assert egress.partition.refused.labels("StopAfter")._value.get() == 1
            etcd.resume()
            await eventually(lambda: not mirror.stale and lag.stale_for("edge") == 0, what="the mirror live again")
            assert await who(it.address) == "edge"  # east is still stale (no heartbeat): left out, as it says
        finally:
            etcd.resume()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await mirror._client.close()
            await writer.close()
