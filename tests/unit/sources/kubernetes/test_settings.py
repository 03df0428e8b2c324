"""The `kubernetes:` config section."""

from __future__ import annotations

import pytest

from federation.core.errors import ConfigError
from federation.core.settings import read
from federation.sources.kubernetes.settings import KubernetesSettings


def test_defaults_and_values() -> None:
    assert read(KubernetesSettings, {}, "kubernetes") == KubernetesSettings()
    s = read(KubernetesSettings, {"enabled": True, "kubeconfig": "/k", "watch_timeout": 30, "resync": 5}, "k")
    assert (s.enabled, s.kubeconfig, s.watch_timeout, s.resync) == (True, "/k", 30, 5.0)


@pytest.mark.parametrize(("data", "message"), [
    ({"nope": 1}, "kubernetes.nope: unknown field"),
    ({"enabled": "yes"}, "kubernetes.enabled: must be true or false"),
    ({"namespace": "Not OK"}, "kubernetes.namespace: 'Not OK' is not a DNS label"),
    ({"owned_label": "a b"}, "kubernetes.owned_label: 'a b' is not a label key"),
    ({"owned_value": ""}, "kubernetes.owned_value:"),
    ({"watch_timeout": 0}, "kubernetes.watch_timeout:"),
    ({"backoff_base": -1}, "kubernetes.backoff_base: must be a positive"),
    ({"backoff_base": 60}, "kubernetes.backoff_base: 60.0 exceeds backoff_cap"),
    ({"egress_address": "pod"}, "kubernetes.egress_address: 'pod' is not an IP address"),
])
def test_errors_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
        read(KubernetesSettings, data, "kubernetes")
