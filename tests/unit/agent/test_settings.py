"""Config parsing: defaults, environment overrides, exports."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.agent.settings import load_config, parse_config
from federation.core.errors import ConfigError
from federation.core.records import ServiceType


def test_minimal_config_gets_documented_defaults() -> None:
    cfg = parse_config({"site": {"name": "east", "network": "n1"}}, "x.yaml")
    assert cfg.registry.endpoints == ()
    assert cfg.registry.lease_ttl == 10
    assert cfg.admin.port == 15000
    assert cfg.state_dir == Path("/var/lib/meshfed")


def test_environment_overrides() -> None:
    env = {"MESHFED_REGISTRY_ENDPOINTS": "10.0.0.1:2379,10.0.0.2:2379", "MESHFED_STATE_DIR": "/tmp/s",
           "MESHFED_ADMIN_ADDRESS": "127.0.0.1:0"}
    cfg = parse_config({"site": {"name": "east", "network": "n1"}}, "x.yaml", env)
    assert cfg.registry.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert cfg.state_dir == Path("/tmp/s")
    assert cfg.admin.port == 0


def test_exports_are_parsed_and_validated() -> None:
    cfg = parse_config({
        "site": {"name": "east", "network": "n1"},
        "exports": [{"namespace": "db", "name": "pg", "type": "Headless", "ports": [{"name": "pg", "port": 5432}],
                     "endpoints": [{"address": "10.0.0.5", "hostname": "pg-0", "ports": {"pg": 15432}}]}],
    }, "x.yaml")
    [e] = cfg.exports
    assert e.type is ServiceType.HEADLESS
    assert e.endpoints[0].port_for(e.ports[0]) == 15432
    with pytest.raises(ConfigError, match=r"x.yaml: exports\[1\]: db/pg is exported twice"):
        parse_config({"site": {"name": "east", "network": "n1"}, "exports": [
            {"namespace": "db", "name": "pg", "ports": [{"name": "pg", "port": 1}]}] * 2}, "x.yaml")


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_pod_ip_becomes_the_kubernetes_egress_address() -> None:
    cfg = parse_config({"site": {"name": "east", "network": "n1", "kind": "kubernetes"}}, "x.yaml",
                       {"MESHFED_POD_IP": "10.1.2.3"})
    assert cfg.sections["kubernetes"]["egress_address"] == "10.1.2.3"
    explicit = parse_config({"site": {"name": "east", "network": "n1"}, "kubernetes": {"egress_address": "10.9.9.9"}},
                            "x.yaml", {"MESHFED_POD_IP": "10.1.2.3"})
    assert explicit.sections["kubernetes"]["egress_address"] == "10.9.9.9"
