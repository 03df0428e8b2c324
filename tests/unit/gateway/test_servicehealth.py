"""Pure cores of per-service active health and partition behaviour: the health query codec on hostile
bytes, the thresholds of the prober's table, the partition decision."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core.errors import RemoteProtocolError
from federation.core.policy.codec import from_document
from federation.core.policy.model import ActiveHealth, Partition, PartitionMode
from federation.core.records import Gateway
from gateway.healthquery import Health, HealthAnswer, HealthQuery
from gateway.partition import decide
from gateway.preamble import NEED_DATA, Preamble, Role
from gateway.serviceprobes import DEFAULT, HealthTable, settings_for, targets
from tests.pkihelp import Mesh, export, view

WEB = ("shop", "web")


def test_a_query_and_its_answer_round_trip() -> None:
    query = HealthQuery(7, (WEB, ("a", "b")))
    server = Preamble(Role.SERVER)
    server.receive_data(Preamble(Role.CLIENT).send(query))
    assert server.next_event() == query
    client = Preamble(Role.CLIENT)
    client.receive_data(Preamble(Role.SERVER).send(HealthAnswer(7, (Health.READY, Health.NOT_EXPORTED))))
    assert client.next_event() == HealthAnswer(7, (Health.READY, Health.NOT_EXPORTED))


def test_a_state_from_a_later_release_reads_as_unknown() -> None:
    client = Preamble(Role.CLIENT)
    client.receive_data(b"\x01\x06\x00\x0b" + (7).to_bytes(8, "big") + b"\x00\x01\x09")
    assert client.next_event() == HealthAnswer(7, (Health.UNKNOWN,))


@given(st.binary(max_size=300))
def test_hostile_bytes_after_a_query_header_never_crash(body: bytes) -> None:
    server = Preamble(Role.SERVER)
    server.receive_data(b"\x01\x05" + len(body).to_bytes(2, "big") + body)
    try:
        event = server.next_event()
    except RemoteProtocolError:
        return
    assert event is NEED_DATA or isinstance(event, HealthQuery)


def test_thresholds_take_a_site_out_and_back_and_unknown_changes_nothing() -> None:
    table, ah = HealthTable(), ActiveHealth(unhealthy_threshold=2, healthy_threshold=2)
    table.set_services(WEB, ["east", "edge"])
    assert table.observe("east", WEB, Health.READY, "", ah, 1.0) == "HEALTHY"  # first answer: at once
    assert table.observe("east", WEB, Health.NO_READY_ENDPOINT, "x", ah, 2.0) is None
    assert table.observe("east", WEB, Health.UNKNOWN, "", ah, 3.0) is None  # neither up nor down
    assert table.observe("east", WEB, None, "unreachable", ah, 4.0) == "UNHEALTHY"
    assert table.unhealthy == {("east", *WEB)}
    assert table.observe("east", WEB, Health.READY, "", ah, 5.0) is None  # one lucky probe is not enough
    assert table.observe("east", WEB, Health.READY, "", ah, 6.0) == "HEALTHY"
    table.observe("edge", WEB, None, "x", ah, 7.0)
    table.observe("edge", WEB, None, "x", ah, 8.0)
    assert table.unknown("edge", WEB, "older agent", 9.0) == "UNKNOWN"
    assert not table.unhealthy
    table.set_services(WEB, ["east"])
    assert set(table.by_site) == {"east"}


@pytest.mark.parametrize(("mode", "after", "stale", "refused"), [
    (PartitionMode.KEEP_SERVING, None, 1e9, False), (PartitionMode.FAIL_CLOSED, None, 0.0, False),
    (PartitionMode.FAIL_CLOSED, None, 0.1, True), (PartitionMode.STOP_AFTER, 30.0, 29.0, False),
    (PartitionMode.STOP_AFTER, 30.0, 30.0, True),
])
def test_partition_decision(mode: PartitionMode, after: float | None, stale: float, refused: bool) -> None:
    assert (decide(Partition(mode, after), stale) is not None) is refused


def test_services_of_a_site_are_asked_together_each_at_its_interval() -> None:
    table = HealthTable(slack=0.5)
    api = ("shop", "api")
    table.set_services(WEB, ["east"])
    table.set_services(api, ["east", "edge"])
    assert table.due(0.0) == {"east": [api, WEB], "edge": [api]}
    table.asked("east", [api, WEB], 0.0, lambda s: 1.0 if s == WEB else 5.0)
    table.asked("edge", [api], 0.0, lambda s: 5.0)
    assert table.next_due() == 1.0
    assert table.due(0.9) == {}
    assert table.due(1.0) == {"east": [WEB]}
    table.asked("east", [WEB], 1.0, lambda s: 1.0)
    assert table.due(4.6) == {"east": [api, WEB]}  # api is due within the slack: asked with web
    table.set_services(api, ["edge"])
    assert set(table.sites_of[api]) == {"edge"}
    assert ("east", *api) not in table.states
    table.set_services(WEB, [])
    assert set(table.by_site) == {"edge"}


def test_who_is_asked_and_with_which_settings() -> None:
    mesh = Mesh()
    gw = (Gateway("gw", "127.0.0.1", 15443),)
    sites = [mesh.site("west", network="n1"), mesh.site("lan", network="n1", gateways=gw),
             mesh.site("east", network="n2", gateways=gw), mesh.site("bare", network="n3")]
    exports = [export(s, "shop", "web", 80) for s in ("west", "lan", "east", "bare")]
    assert targets(view(sites, exports), "west", WEB) == ["east"]  # not itself, its network, nor gatewayless
    policy = from_document({"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
                            "metadata": {"namespace": "shop", "name": "web"},
                            "spec": {"activeHealth": {"interval": "500ms", "timeout": "500ms", "enabled": False}}})
    assert settings_for({}, WEB) is DEFAULT
    assert settings_for({WEB: policy}, WEB) == ActiveHealth(enabled=False, interval=0.5, timeout=0.5)


def test_one_forbidden_answer_takes_a_service_out_at_once_with_its_reason() -> None:
    table, ah = HealthTable(), ActiveHealth(unhealthy_threshold=3, healthy_threshold=2)
    table.set_services(WEB, ["east", "edge"])
    assert table.observe("east", WEB, Health.READY, "", ah, 1.0) == "HEALTHY"
    assert table.observe("east", WEB, Health.FORBIDDEN, "denied there", ah, 2.0) == "UNHEALTHY"  # not after 3
    assert table.unhealthy == {("east", *WEB)}
    assert table.states[("east", *WEB)].reason == "denied there"
    assert table.observe("east", WEB, Health.READY, "", ah, 3.0) is None  # the policy let us in again: 2 passes
    assert table.observe("east", WEB, Health.READY, "", ah, 4.0) == "HEALTHY"


def test_a_forbidden_service_is_answered_so_and_never_checked() -> None:
    from prometheus_client import CollectorRegistry

    from federation.runtime.values import Value
    from gateway.endpointchecks import EndpointChecks

    mesh = Mesh()
    exports = [export("east", "shop", "web", 80), export("east", "shop", "cart", 80)]
    spawned: list[str] = []

    def spawn(coro: object, name: str) -> None:
        spawned.append(name)
        coro.close()  # type: ignore[attr-defined]

    checks = EndpointChecks("east", Value(view([mesh.site("east")], exports), name="mesh"), spawn, lambda: 1.0,
                            CollectorRegistry())
    assert checks.denied._value.get() == 0  # registered at start: exposed at 0
    query = HealthQuery(7, (("shop", "web"), ("shop", "cart"), ("shop", "gone"), ("shop", "web")))
    answer = checks.answer(query, "west", lambda s: "denied by rule r of shop/web" if s == WEB else None)
    assert answer == HealthAnswer(7, (Health.FORBIDDEN, Health.UNKNOWN, Health.NOT_EXPORTED, Health.FORBIDDEN))
    assert spawned == ["endpoint-check-shop-cart"]  # the forbidden service's endpoints are not even checked
    assert checks.denied._value.get() == 2
