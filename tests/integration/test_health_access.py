"""Active health queries and access policy through real tunnels (tests/integration/policylab.py).

A gateway tells a peer nothing of the state of a service the policy closes to it (FORBIDDEN, counted,
logged once); the peer's prober takes that service's route from its site out, with the reason, instead of
calling the gateway dead. A query naming a service with a control character is refused like any
malformed preamble."""

from __future__ import annotations

import asyncio
import collections
import logging
from pathlib import Path

import pytest

from federation.agent.gateways import status_warnings
from federation.core.policy import access
from federation.core.policy.access import AccessState, Action, MeshAccess
from federation.runtime.values import Value
from gateway.preamble import Status
from tests.integration.policylab import EU1, NamedServer, lab, many
from tests.integration.test_eastwest import _hostile
from tests.integration.test_service_health import prober
from tests.tunnelhelp import RawTunnel, two_sites
from tests.util import eventually

EAST = ("east", "shop", "web")
EDGE = ("edge", "shop", "web")


def no_west() -> AccessState:
    doc = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPolicy", "metadata": {"namespace": "shop", "name": "web"},
           "spec": {"rules": [{"name": "no-west", "action": "Deny", "from": {"sites": ["west"]}}]}}
    return AccessState({("shop", "web"): access.from_document(doc)}, MeshAccess(Action.ALLOW))


@pytest.mark.timeout(60)
async def test_a_service_the_policy_closes_to_the_asker_is_forbidden_not_its_state(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy: Value[AccessState] = Value(AccessState(), name="east access")
    async with lab(tmp_path) as it:
        await it.add("east", [NamedServer("east")], EU1, access=policy)
        await it.add("edge", [NamedServer("edge")], EU1)
        egress = await it.start_egress(EU1)
        east = it.sites["east"].gateway
        assert east is not None
        assert east.health.denied._value.get() == 0  # registered at start (exposed at 0)
        p = prober(it)
        table = p.service_probes.table
        task = asyncio.create_task(p.service_probes.run(), name="service-probes")
        try:
            await eventually(lambda: getattr(table.states.get(EAST), "state", "") == "HEALTHY", what="east healthy")
            checked = east.health.checks.labels("ok")._value.get()
            caplog.set_level(logging.WARNING, logger="gateway.endpointchecks")
            policy.set(no_west())
            await eventually(lambda: EAST in egress.reach.services.get(), timeout=5.0, what="east out for west")
            state = table.states[EAST]
            assert state.state == "UNHEALTHY"
            assert state.reason == "its access policy refuses streams from this site (FORBIDDEN)"
            assert table.states[EDGE].state == "HEALTHY"  # nothing else disturbed
            assert p.service_probes.metrics.answers.labels("forbidden")._value.get() >= 1
            assert f"service shop/web at site east is left out of DNS answers and routes: {state.reason} " \
                   "(meshfed gateways --site east)" in status_warnings(p, {}, lambda _k: False, None)
            await asyncio.sleep(2.5)  # more rounds (1 s interval): still answered, counted, logged once
            denied = east.health.denied._value.get()
            assert denied >= 3
            # While the policy refuses west, east's endpoints are not checked for west's sake: no state leaks.
            assert east.health.checks.labels("ok")._value.get() <= checked + 1  # one check may have been running
            lines = [r.getMessage() for r in caplog.records if "answered FORBIDDEN" in r.getMessage()]
            assert lines == ["health query from site west: 1 service(s) answered FORBIDDEN, e.g. shop/web: "
                             "denied by rule no-west of shop/web (rule shop/web:no-west)"]
            assert collections.Counter(await many(it.address, 20, parallel=4)) == {"edge": 20}  # routed elsewhere
            assert not any(s.state == "UNHEALTHY" for k, s in table.states.items() if k != EAST)
            assert p.service_probes.metrics.answers.labels("unreachable")._value.get() == 0  # never a dead gateway
            policy.set(AccessState())  # the policy lets west in again: east comes back
            await eventually(lambda: EAST not in egress.reach.services.get(), timeout=6.0, what="east back")
            assert table.states[EAST].state == "HEALTHY"
            assert set(await many(it.address, 40, parallel=4)) == {"east", "edge"}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("name", [b"echo\n", b"echo\x00"])
async def test_a_health_query_naming_a_service_with_a_control_character_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, name: bytes) -> None:
    """Through a real tunnel: `bad-request`, the tunnel closed, one refusal line; a running stream goes on."""
    caplog.set_level(logging.DEBUG, logger="gateway")
    async with two_sites(tmp_path) as s:
        async def attack() -> None:
            t = await RawTunnel.open(s.gw_port, s.west.client)
            body = (7).to_bytes(8, "big") + (1).to_bytes(2, "big") + b"\x02ns" + bytes((len(name),)) + name
            t.writer.write(b"\x01\x05" + len(body).to_bytes(2, "big") + body)
            resp = await t.response()
            assert resp.status is Status.BAD_REQUEST
            assert await t.closed_by_peer()
            await t.close()
        await _hostile(s, caplog, attack, "is not a valid name")
