"""What a reload applies live and what waits for a restart (the pure plan)."""

from __future__ import annotations

import dataclasses

import pytest

from federation.agent.reload import LIVE, plan
from federation.agent.settings import AgentSettings, parse_settings
from federation.core.errors import ConfigError

BASE = {"site": {"name": "east", "network": "n1"}, "registry": {"signatures": "accept"},  # no gateway.ca_dir here
        "exports": [{"namespace": "shop", "name": "web", "ports": [{"name": "http", "port": 80}],
                     "endpoints": [{"addresses": ["10.0.0.1"]}]}]}


def settings(**sections: object) -> AgentSettings:
    return parse_settings({**BASE, **sections}, "agent.yaml")


def test_nothing_changed_applies_nothing() -> None:
    running = settings()
    outcome = plan(running, settings())
    assert (outcome.live, outcome.restart) == ((), ())
    assert outcome.applied == running


def test_live_changes_are_applied_and_restart_only_ones_keep_their_running_value() -> None:
    running = settings()
    new = settings(exports=[*BASE["exports"], {"namespace": "shop", "name": "api", "ports": [{"name": "h", "port": 81}],
                                               "endpoints": [{"addresses": ["10.0.0.2"]}]}],
                   dns={"ttl": 30, "zone": "mesh.internal"}, gateway={"connect_timeout": 2.0, "listen_port": 16443})
    outcome = plan(running, new)
    assert outcome.live == ("dns.ttl", "exports", "gateway.connect_timeout")
    assert outcome.restart == ("dns.zone", "gateway.listen_port")
    applied = outcome.applied
    assert [e.name for e in applied.exports] == ["web", "api"]
    assert all(e.site == "east" for e in applied.exports)
    assert (applied.dns.ttl, applied.dns.zone) == (30, running.dns.zone)
    assert (applied.gateway.connect_timeout, applied.gateway.listen_port) == (2.0, running.gateway.listen_port)
    assert applied.site is running.site  # untouched sections are the very same objects (followers stay asleep)
    assert applied.registry is running.registry


def test_a_mix_of_live_and_running_values_that_breaks_a_rule_is_refused() -> None:
    running = settings(gateway={"pool_idle": 60.0, "tunnel_idle_timeout": 90.0})
    # The new file is consistent (both lowered), but pool_idle needs a restart: 30 s < 60 s would leave peers
    # closing pooled tunnels, so nothing is applied.
    new = settings(gateway={"pool_idle": 20.0, "tunnel_idle_timeout": 30.0})
    with pytest.raises(ConfigError, match=r"agent\.yaml: gateway\.pool_idle: must be below tunnel_idle_timeout"):
        plan(running, new)


def test_every_live_path_names_a_real_setting() -> None:
    tree = AgentSettings.__dataclass_fields__
    for path in LIVE:
        section, _, field = path.partition(".")
        assert section in tree, path
        if field:
            assert field in {f.name for f in dataclasses.fields(tree[section].default)}, path  # type: ignore[arg-type]
