"""A label split through a gateway, over real tunnels: the stream request carries the drawn subset, the
remote gateway picks only its endpoints, says so when it has none (the egress fails over), and an old
gateway that refuses the extension still serves every client (as before subsets, any endpoint)."""

from __future__ import annotations

import collections
import dataclasses
import logging
import operator
from pathlib import Path

import pytest

from federation.core.errors import RemoteProtocolError
from federation.core.view import MeshView
from federation.runtime.values import Value
from gateway import preamble
from tests.integration.policylab import NamedServer, lab, many
from tests.integration.test_traffic_enforced import EU1

SPLIT = "split: [{weight: 80, labels: {version: v1}}, {weight: 20, labels: {version: v2}}]"


def _servers() -> list[NamedServer]:
    return [NamedServer("v1-a", {"version": "v1"}), NamedServer("v1-b", {"version": "v1"}),
            NamedServer("v2", {"version": "v2"})]


@pytest.mark.timeout(120)
async def test_a_label_split_through_a_gateway_lands_on_the_subsets_endpoints(tmp_path: Path) -> None:
    """Without the subset in the request east's gateway would spread the clients over its three endpoints
    (a third each); with it, v2 gets its 20 % and the v1 endpoints share the 80 %."""
    async with lab(tmp_path) as it:
        await it.add("east", _servers(), EU1)
        await it.start_egress(EU1)
        it.set_policy(SPLIT)
        got = collections.Counter(await many(it.address, 1000, parallel=32))
        assert sum(got.values()) == 1000, got
        assert abs(got["v2"] / 1000 - 0.20) <= 0.02, got
        assert abs((got["v1-a"] + got["v1-b"]) / 1000 - 0.80) <= 0.02, got
        assert got["v1-a"] > 300, got  # the gateway balances within the subset
        assert got["v1-b"] > 300, got


@pytest.mark.timeout(90)
async def test_a_subset_the_gateway_has_no_endpoint_of_fails_over_to_another_site(tmp_path: Path) -> None:
    """East's gateway knows its v2 endpoint is gone before west's egress does: it answers "no ready endpoint
    of subset version=v2", and the retry takes v2's share to edge's v2 endpoint; no client fails, and no
    v2 client lands on east's v1 endpoints."""
    async with lab(tmp_path) as it:
        east = await it.add("east", _servers(), EU1)
        await it.add("edge", [NamedServer("edge-v2", {"version": "v2"})], EU1)
        await it.start_egress(EU1)
        it.set_policy(SPLIT)
        assert east.gateway is not None
        mesh = it.view_value.get()
        export = mesh.exports[("east", "shop", "web")]
        gone = dataclasses.replace(export, endpoints=export.endpoints[:2])
        east.gateway.mesh = Value(MeshView(sites=mesh.sites, exports={**mesh.exports, ("east", "shop", "web"): gone}),
                                  name="east's own view", same=operator.is_)
        got = collections.Counter(await many(it.address, 200, parallel=16))
        assert got[""] == 0, got
        assert got["v2"] == 0, got
        assert 20 <= got["edge-v2"] <= 60, got  # about 20 %: v2's share, at edge now
        assert got["v1-a"] + got["v1-b"] + got["edge-v2"] == 200, got
        assert east.gateway.metrics.streams.labels("no_healthy_endpoint")._value.get() >= 1


@pytest.mark.timeout(90)
async def test_an_old_gateway_refuses_the_subset_and_is_sent_the_request_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """East's gateway decodes requests as gateways before the extension did (bytes after the hostname are
    refused): every client is still served, at any of east's endpoints, even in a burst before the egress
    learnt it (each may pay one refusal and a fresh tunnel), and later clients pay nothing."""
    def old(body: preamble._Reader) -> dict[int, bytes]:
        if body.left():
            raise RemoteProtocolError(f"preamble has {body.left()} bytes after its last field",
                                      cause="trailing-bytes")
        return {}

    monkeypatch.setattr(preamble, "_decode_extensions", old)
    caplog.set_level(logging.WARNING, logger="gateway.subsets")
    async with lab(tmp_path) as it:
        await it.add("east", _servers(), EU1)
        await it.start_egress(EU1)
        it.set_policy(SPLIT)
        got = collections.Counter(await many(it.address, 60, parallel=16))  # a burst before the first refusal
        assert got[""] == 0, got
        assert set(got) == {"v1-a", "v1-b", "v2"}, got  # east's gateway picks any endpoint, as before
        first = it.attempts("gateway", "bad_request")
        assert 1 <= first <= 16  # at most the clients of the first burst: then the egress knows
        assert collections.Counter(await many(it.address, 20, parallel=4))[""] == 0
        assert it.attempts("gateway", "bad_request") == first
        assert "does not take preamble extensions" in caplog.text


@pytest.mark.timeout(90)
async def test_a_subset_no_site_has_gives_its_share_to_the_other_target_at_the_same_site(tmp_path: Path) -> None:
    """Only east, and its gateway has no v2 endpoint any more: the retry leaves out east's v2 endpoint only,
    not the whole site, so it lands on east's v1 endpoints. Two attempts and no ejection: every client that
    drew v2 needs that one retry to succeed."""
    async with lab(tmp_path) as it:
        east = await it.add("east", _servers(), EU1)
        await it.start_egress(EU1)
        it.set_policy(SPLIT + "\nretries: {attempts: 2, budget: {percent: 100}}\noutlierDetection: {enabled: false}")
        assert east.gateway is not None
        mesh = it.view_value.get()
        export = mesh.exports[("east", "shop", "web")]
        gone = dataclasses.replace(export, endpoints=export.endpoints[:2])
        east.gateway.mesh = Value(MeshView(sites=mesh.sites, exports={**mesh.exports, ("east", "shop", "web"): gone}),
                                  name="east's own view", same=operator.is_)
        got = collections.Counter(await many(it.address, 200, parallel=8))
        assert got == {"v1-a": got["v1-a"], "v1-b": got["v1-b"]}, got  # none failed, none on v2
        assert it.action("retry") >= 20  # about a fifth drew v2 first
