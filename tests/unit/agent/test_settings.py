"""The agent's settings tree: one loader for every section, defaults, environment, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.agent.settings import AgentSettings, load_settings, parse_settings
from federation.core.errors import ConfigError
from federation.core.records import ServiceType
from federation.core.verification import Mode
from federation.dns.settings import DnsSettings
from gateway.settings import GatewaySettings

SITE = {"site": {"name": "east", "network": "n1"}, "registry": {"signatures": "accept"}}


def test_signatures_are_required_by_default_and_need_a_site_ca() -> None:
    with pytest.raises(ConfigError, match=r"^x.yaml: registry.signatures: require needs .* set gateway.ca_dir"):
        parse_settings({"site": SITE["site"]}, "x.yaml")
    cfg = parse_settings({"site": SITE["site"], "gateway": {"ca_dir": "/etc/meshfed/site"}}, "x.yaml")
    assert cfg.registry.signatures is Mode.REQUIRE
    assert cfg.registry.on_duplicate == "wait"
    with pytest.raises(ConfigError, match=r"registry.on_duplicate: 'fight' is not one of wait, refuse"):
        parse_settings({**SITE, "registry": {"signatures": "accept", "on_duplicate": "fight"}}, "x.yaml")


def test_minimal_config_gets_documented_defaults() -> None:
    cfg = parse_settings(SITE, "x.yaml")
    assert cfg.registry.endpoints == ()
    assert cfg.registry.lease_ttl == 10
    assert cfg.admin.port == 15000
    assert cfg.state_dir == Path("/var/lib/meshfed")
    assert cfg.gateway == GatewaySettings()
    assert cfg.dns == DnsSettings()
    assert cfg.source == "x.yaml"


def test_environment_overrides() -> None:
    env = {"MESHFED_REGISTRY_ENDPOINTS": "10.0.0.1:2379,10.0.0.2:2379", "MESHFED_STATE_DIR": "/tmp/s",
           "MESHFED_ADMIN_ADDRESS": "127.0.0.1:0"}
    cfg = parse_settings(SITE, "x.yaml", env)
    assert cfg.registry.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert cfg.state_dir == Path("/tmp/s")
    assert cfg.admin.port == 0


def test_exports_are_parsed_validated_and_carry_the_site() -> None:
    cfg = parse_settings({
        **SITE,
        "exports": [{"namespace": "db", "name": "pg", "type": "Headless", "ports": [{"name": "pg", "port": 5432}],
                     "endpoints": [{"address": "10.0.0.5", "hostname": "pg-0", "ports": {"pg": 15432}}]}],
    }, "x.yaml")
    [e] = cfg.exports
    assert e.site == "east"
    assert e.type is ServiceType.HEADLESS
    assert e.endpoints[0].port_for(e.ports[0]) == 15432
    with pytest.raises(ConfigError, match=r"^x.yaml: exports\[1\]: db/pg is exported twice"):
        parse_settings({**SITE, "exports": [
            {"namespace": "db", "name": "pg", "ports": [{"name": "pg", "port": 1}]}] * 2}, "x.yaml")


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_settings(tmp_path / "nope.yaml")


def test_pod_ip_becomes_the_kubernetes_egress_address() -> None:
    k8s = {"site": {"name": "east", "network": "n1", "kind": "kubernetes"}, "registry": {"signatures": "accept"}}
    cfg = parse_settings(k8s, "x.yaml", {"MESHFED_POD_IP": "10.1.2.3"})
    assert cfg.kubernetes.egress_address == "10.1.2.3"
    explicit = parse_settings({**k8s, "kubernetes": {"egress_address": "10.9.9.9"}}, "x.yaml",
                              {"MESHFED_POD_IP": "10.1.2.3"})
    assert explicit.kubernetes.egress_address == "10.9.9.9"


@pytest.mark.parametrize(("data", "message"), [
    ({"pki": {"root": "/x"}}, "x.yaml: pki: unknown field (known: "),
    ({"site": {"name": "east"}}, "x.yaml: site.network: is required"),
    ({}, "x.yaml: site: is required"),
    ({**SITE, "dns": {"ttl": -1}}, "x.yaml: dns.ttl: -1 is not in 0..86400"),
    ({**SITE, "gateway": {"workers": "2"}}, "x.yaml: gateway.workers: '2' is not a whole number"),
    ({**SITE, "vm": {"services": [{"namespace": "s", "name": "w", "ports": [{"name": "h", "port": 1}],
                                   "check": {"kind": "ping"}}]}},
     "x.yaml: vm.services[0].check.kind: 'ping' is not one of"),
    ({**SITE, "kubernetes": {"watch_timeout": 0}}, "x.yaml: kubernetes.watch_timeout: 0 is not in 1..3600"),
    ({**SITE, "kubernetes": {"enabled": True}}, "x.yaml: kubernetes.enabled: site east is of kind vm"),
    ({**SITE, "registry": {"endpoints": ["nohost"]}}, "x.yaml: registry.endpoints[0]: 'nohost' is not host:port"),
    ({**SITE, "registry": {"tls": {"ca": "/nonexistent"}}}, "x.yaml: registry.tls.cert: is required"),
    ({**SITE, "admin": {"address": "localhost"}}, "x.yaml: admin.address: 'localhost' is not an IP address"),
    ({**SITE, "source": "y"}, "x.yaml: source: unknown field"),
    ([1, 2], "x.yaml: the top level must be a mapping"),
])
def test_every_section_refuses_what_it_does_not_know_with_file_field_and_reason(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(data, "x.yaml")
    assert str(err.value).startswith(message), str(err.value)


def test_command_line_overrides_are_checked_like_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("site: {name: east, network: n1}\nregistry: {signatures: accept}\ngateway: {workers: 1}\n")
    assert load_settings(path, {}, {"gateway.workers": 3}).gateway.workers == 3
    with pytest.raises(ConfigError, match=r"gateway.workers: 0 is not in 1..64"):
        load_settings(path, {}, {"gateway.workers": 0})


def test_every_settings_field_says_why_its_default() -> None:
    import ast
    import dataclasses
    import inspect
    import sys

    from federation.core.settings import read  # noqa: F401 - the loader these classes are read by

    classes = [AgentSettings, *(f.type for f in dataclasses.fields(AgentSettings))]
    seen = set()
    for cls in classes:
        cls = eval(cls, vars(sys.modules[AgentSettings.__module__])) if isinstance(cls, str) else cls  # noqa: S307
        if not dataclasses.is_dataclass(cls) or cls in seen:
            continue
        seen.add(cls)
        tree = ast.parse(inspect.getsource(sys.modules[cls.__module__]))
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
        for i, item in enumerate(node.body):
            if isinstance(item, ast.AnnAssign):
                nxt = node.body[i + 1] if i + 1 < len(node.body) else None
                where = f"{cls.__name__}.{ast.unparse(item.target)}"
                assert isinstance(nxt, ast.Expr), f"{where} has no docstring"
                assert isinstance(nxt.value, ast.Constant), f"{where} has no docstring"
    assert len(seen) >= 6


def test_the_heartbeat_and_the_access_log_have_safe_defaults_and_bounds() -> None:
    cfg = parse_settings(SITE, "x.yaml")
    assert cfg.registry.heartbeat_interval == 30.0
    assert cfg.access_log.path == ""  # off
    assert parse_settings({**SITE, "registry": {"signatures": "accept", "heartbeat_interval": 0}},
                          "x.yaml").registry.heartbeat_interval == 0
    with pytest.raises(ConfigError, match=r"registry.heartbeat_interval: 0.5 is below 1 s \(0 turns the heartbeat off\)"):
        parse_settings({**SITE, "registry": {"signatures": "accept", "heartbeat_interval": 0.5}}, "x.yaml")
    cfg = parse_settings({**SITE, "access_log": {"path": "-", "sample": 0.1}}, "x.yaml")
    assert (cfg.access_log.path, cfg.access_log.sample, cfg.access_log.buffer) == ("-", 0.1, 10_000)
    with pytest.raises(ConfigError, match=r"access_log.sample: 2(\.0)? is not in 0(\.0)?\.\.1"):
        parse_settings({**SITE, "access_log": {"sample": 2}}, "x.yaml")
    with pytest.raises(ConfigError, match=r"access_log.where: unknown field"):
        parse_settings({**SITE, "access_log": {"where": "-"}}, "x.yaml")


def test_endpoint_chunks_are_off_until_asked_for_so_that_older_readers_keep_every_endpoint() -> None:
    assert parse_settings(SITE, "x.yaml").registry.endpoint_chunk_size == 0
    cfg = parse_settings({**SITE, "registry": {"signatures": "accept", "endpoint_chunk_size": 100}}, "x.yaml")
    assert cfg.registry.endpoint_chunk_size == 100
    with pytest.raises(ConfigError, match=r"registry.endpoint_chunk_size: -1 is not in 0\.\.10000"):
        parse_settings({**SITE, "registry": {"signatures": "accept", "endpoint_chunk_size": -1}}, "x.yaml")
