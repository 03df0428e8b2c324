"""The `gateway:` config section."""

from __future__ import annotations

import dataclasses

import pytest

from federation.core.errors import ConfigError
from federation.core.settings import read
from gateway.settings import GatewaySettings


def test_defaults_and_overrides() -> None:
    assert read(GatewaySettings, {}, "gateway") == GatewaySettings()
    s = read(GatewaySettings, {"listen-port": 0, "workers": 2, "idle_timeout": 30}, "gateway")
    assert (s.listen_port, s.workers, s.idle_timeout) == (0, 2, 30.0)


def test_every_field_says_why_its_default() -> None:
    import ast
    import inspect

    import gateway.settings as mod

    tree = ast.parse(inspect.getsource(mod))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GatewaySettings")
    body = cls.body
    names = [f.name for f in dataclasses.fields(GatewaySettings)]
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign):
            nxt = body[i + 1]
            assert isinstance(nxt, ast.Expr), f"{names} field at line {node.lineno} has no docstring"


@pytest.mark.parametrize(("data", "message"), [
    ({"listen_port": 70000}, "gateway.listen_port: 70000 is not in 0..65535"),
    ({"workers": 0}, "gateway.workers: 0 is not in 1..64"),
    ({"workers": "2"}, "gateway.workers: '2' is not a whole number"),
    ({"connect_timeout": 0}, "gateway.connect_timeout: must be a positive number"),
    ({"idle_timeout": True}, "gateway.idle_timeout: True is not a number"),
    ({"listen_address": "example.com"}, "gateway.listen_address: 'example.com' is not an IP address"),
    ({"colour": 1}, "gateway.colour: unknown field"),
    ({"name": "Gw_1"}, "gateway.name: 'Gw_1' is not a DNS label"),
    ({"pool_idle": 100, "tunnel_idle_timeout": 90}, "gateway.pool_idle: must be below"),
])
def test_bad_values_name_the_field_and_reason(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        read(GatewaySettings, data, "gateway")
    assert str(err.value).startswith(message)


def test_throttle_lets_one_line_per_key_per_interval() -> None:
    from gateway.refusals import Throttle

    t = Throttle(interval=60, capacity=2)
    assert t.allow("a", now=0)
    assert not t.allow("a", now=59)
    assert t.allow("b", now=59)
    assert t.allow("a", now=61)
    assert t.allow("c", now=62)  # capacity 2: the oldest key ("b") is forgotten
    assert t.allow("b", now=63)
    assert t.suppressed == 1
