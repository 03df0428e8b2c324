"""Traffic policies enforced by the egress, through real tunnels: real east-west gateways with real TLS on
loopback, servers that say their name, and (for live apply) a real etcd with the agent's policy reader."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from pathlib import Path

import pytest

from federation.core.backoff import Backoff
from federation.core.keys import Keys
from federation.core.records import Locality
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.policies import PolicyReader, PolicyStore
from tests.integration.policylab import Lab, NamedServer, lab, many, policy, who
from tests.util import eventually

EU1, EU2, US, AP = Locality("eu", "eu-1"), Locality("eu", "eu-2"), Locality("us", "us-1"), Locality("ap", "ap-1")


async def four_regions(lab: Lab) -> None:
    await lab.add("east", [NamedServer("east")], EU1)
    await lab.add("north", [NamedServer("north")], EU2)
    await lab.add("south", [NamedServer("south")], US)
    await lab.add("far", [NamedServer("far")], AP)
    await lab.start_egress(EU1)


@pytest.mark.timeout(90)
async def test_failover_follows_priority_then_the_explicit_rule(tmp_path: Path) -> None:
    """Zone first, then the region, then the region the `failover` rule names (ap, not the nearer-listed us);
    each dead site's clients are absorbed by a retry, none fails."""
    async with lab(tmp_path) as it:
        await four_regions(it)
        it.set_policy("locality: {spill: Strict, failover: [{from: eu, to: ap}]}")
        assert collections.Counter(await many(it.address, 20, parallel=1)) == {"east": 20}
        await it.sites["east"].servers[0].close()
        assert collections.Counter(await many(it.address, 20, parallel=1)) == {"north": 20}
        await it.sites["north"].servers[0].close()
        assert collections.Counter(await many(it.address, 20, parallel=1)) == {"far": 20}
        await it.sites["far"].servers[0].close()
        assert collections.Counter(await many(it.address, 20, parallel=1)) == {"south": 20}


@pytest.mark.timeout(120)
async def test_a_split_between_sites_holds_within_two_percent_over_2000_connections(tmp_path: Path) -> None:
    async with lab(tmp_path) as it:
        await it.add("east", [NamedServer("east")], EU1)
        await it.add("edge", [NamedServer("edge")], EU1)
        await it.start_egress(EU1)
        it.set_policy("split: [{weight: 90, site: east}, {weight: 10, site: edge}]")
        got = collections.Counter(await many(it.address, 2000, parallel=32))
        assert got["east"] + got["edge"] == 2000, got
        assert abs(got["east"] / 2000 - 0.90) <= 0.02, got


@pytest.mark.timeout(120)
async def test_a_split_between_label_subsets_holds_within_two_percent(tmp_path: Path) -> None:
    """Endpoints on west's own network, by label: the egress connects to the chosen endpoint directly."""
    async with lab(tmp_path) as it:
        servers = [NamedServer("v1-a", {"version": "v1"}), NamedServer("v1-b", {"version": "v1"}),
                   NamedServer("v2", {"version": "v2"})]
        await it.add("lan", servers, EU1, network="net-west")
        await it.start_egress(EU1)
        it.set_policy("split: [{weight: 80, labels: {version: v1}}, {weight: 20, labels: {version: v2}}]")
        got = collections.Counter(await many(it.address, 1000, parallel=32))
        assert sum(got.values()) == 1000, got
        assert abs(got["v2"] / 1000 - 0.20) <= 0.02, got
        assert got["v1-a"] > 300
        assert got["v1-b"] > 300


@pytest.mark.timeout(90)
async def test_a_dead_endpoint_is_ejected_after_three_failures_and_no_client_fails(tmp_path: Path) -> None:
    async with lab(tmp_path) as it:
        await it.add("lan", [NamedServer("a"), NamedServer("b")], EU1, network="net-west")
        await it.start_egress(EU1)
        it.set_policy("{}")  # every default: ejection after 3 connect failures, 3 attempts
        await it.sites["lan"].servers[0].close()
        got = collections.Counter([await who(it.address) for _ in range(40)])
        assert got == {"b": 40}
        assert it.attempts("direct", "refused") == 3  # then ejected for 30 s: never tried again
        assert it.action("ejected_endpoint") == 1


@pytest.mark.timeout(90)
async def test_a_dead_gateway_is_ejected_and_its_site_skipped(tmp_path: Path) -> None:
    """A killed gateway (its site's endpoints may live): two failures eject it, then nothing is sent there."""
    async with lab(tmp_path) as it:
        await it.add("east", [NamedServer("east")], EU1)
        await it.add("edge", [NamedServer("edge")], EU1)
        await it.start_egress(EU1)
        it.set_policy("split: [{weight: 50, site: east}, {weight: 50, site: edge}]")
        gw = it.sites["east"].gateway
        assert gw is not None
        await gw.close()
        got = collections.Counter([await who(it.address) for _ in range(40)])
        assert got == {"edge": 40}
        assert it.action("ejected_gateway") == 1
        failed = it.attempts("gateway", "failed")
        assert collections.Counter([await who(it.address) for _ in range(20)]) == {"edge": 20}
        assert it.attempts("gateway", "failed") == failed


@pytest.mark.timeout(90)
async def test_a_retry_absorbs_a_refused_connect(tmp_path: Path) -> None:
    """Ejection off, so every pick of the dead endpoint is a refused connect: the retry takes the client
    elsewhere before any byte went upstream. With one attempt, the same clients fail."""
    async with lab(tmp_path) as it:
        await it.add("lan", [NamedServer("a"), NamedServer("b")], EU1, network="net-west")
        await it.start_egress(EU1)
        await it.sites["lan"].servers[0].close()
        it.set_policy("outlierDetection: {enabled: false}")
        assert collections.Counter(await many(it.address, 60, parallel=2)) == {"b": 60}
        assert it.action("retry") >= 10
        it.set_policy("outlierDetection: {enabled: false}\nretries: {attempts: 1}")
        got = collections.Counter(await many(it.address, 60, parallel=2))
        assert got[""] >= 10, got
        assert got["b"] >= 10, got


@pytest.mark.timeout(90)
async def test_over_the_breaker_limit_a_client_is_reset_at_once_and_the_others_are_served(tmp_path: Path) -> None:
    async with lab(tmp_path) as it:
        server = NamedServer("east")
        await it.add("east", [server], EU1)
        await it.start_egress(EU1)
        it.set_policy("circuitBreaker: {maxConnections: 3}")
        held = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(*it.address)
            assert await reader.readline() == b"east\n"
            held.append((reader, writer))
        start = time.monotonic()
        assert await who(it.address) == ""
        assert time.monotonic() - start < 0.5  # reset at once, not queued
        assert it.action("breaker_service") == 1
        for reader, writer in held:  # the admitted ones are served all along
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
        held.pop()[1].close()
        await eventually(lambda: server.open == 2, what="the closed connection to end")
        await eventually(lambda: it.egress is not None and it.egress.enforcer._services[("shop", "web")]
                         .breaker.connections == 2, what="the breaker to count it closed")
        assert await who(it.address) == "east"
        for _, writer in held:
            writer.close()


@pytest.mark.timeout(90)
async def test_faults_abort_and_delay_only_the_source_site_they_name(tmp_path: Path) -> None:
    async with lab(tmp_path) as it:
        await it.add("east", [NamedServer("east")], EU1)
        await it.start_egress(EU1)
        it.set_policy("faults: [{sourceSites: [north], abort: {kind: Refuse, percent: 100}}]")
        assert await who(it.address) == "east"
        it.set_policy("faults: [{sourceSites: [west], abort: {kind: Refuse, percent: 100}}]")
        assert collections.Counter(await many(it.address, 10)) == {"": 10}
        assert it.action("fault_abort") == 10
        it.set_policy("faults: [{sourceSites: [west], destinationSites: [edge], abort: {kind: Refuse, percent: 100}}]")
        assert await who(it.address) == "east"  # routed to east: the rule for edge does not match
        it.set_policy("faults: [{sourceSites: [west], delay: {fixed: 400ms, percent: 100}}]")
        start = time.monotonic()
        assert await who(it.address) == "east"
        assert time.monotonic() - start >= 0.4
        it.set_policy("faults: [{sourceSites: [north], delay: {fixed: 2s, percent: 100}}]")
        start = time.monotonic()
        assert await who(it.address) == "east"
        assert time.monotonic() - start < 1.0


@pytest.mark.timeout(120)
async def test_a_policy_applied_in_etcd_takes_effect_within_a_second_and_open_connections_stay(
        tmp_path: Path, etcd: EtcdProcess) -> None:
    keys = Keys()
    reader = PolicyReader(EtcdClient([etcd.endpoint], timeout=3), keys, backoff=Backoff(base=0.05, cap=0.5))
    async with lab(tmp_path) as it, EtcdClient([etcd.endpoint], timeout=3) as client:
        it.policies = reader.policies
        await it.add("east", [NamedServer("east")], EU1)
        await it.add("edge", [NamedServer("edge")], EU1)
        await it.start_egress(EU1)
        task = asyncio.create_task(reader.run(), name="traffic-policies")
        try:
            await eventually(lambda: reader.synced, what="the reader's first listing")
            assert set(await many(it.address, 20)) == {"east", "edge"}  # no policy: both, as before
            reader_r, writer = await asyncio.open_connection(*it.address)
            first = (await reader_r.readline()).decode().strip()
            store = PolicyStore(client, keys)
            await store.apply(policy("split: [{weight: 100, site: edge}]"))
            applied = time.monotonic()
            while await who(it.address) != "edge" or await who(it.address) != "edge":
                assert time.monotonic() - applied < 1.0, "the split did not apply within a second"
            assert collections.Counter(await many(it.address, 20)) == {"edge": 20}
            await store.apply(policy("faults: [{abort: {kind: Refuse, percent: 100}}]"))
            applied = time.monotonic()
            while await who(it.address) != "":
                assert time.monotonic() - applied < 1.0, "the fault did not apply within a second"
            writer.write(b"still here\n")  # opened before both changes, to whichever site: not cut
            assert await reader_r.readline() == b"still here\n", first
            writer.close()
            await store.delete("shop", "web")
            await eventually(lambda: not reader.policies.get(), what="the policy to go")
            assert set(await many(it.address, 20)) == {"east", "edge"}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await reader._client.close()
