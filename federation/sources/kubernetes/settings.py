"""Settings of the Kubernetes source (the agent config's `kubernetes:` section)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from federation.core.errors import ConfigError
from federation.core.settings import parse_section

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    """How the agent reaches the Kubernetes API and which objects it owns there."""

    enabled: bool = False
    """Off unless asked for: a VM site has no API server."""
    kubeconfig: str = ""
    """Empty means in-cluster config (the pod's service account), which is how the Deployment runs."""
    context: str = ""
    """Empty means the kubeconfig's current context, as kubectl does."""
    namespace: str = "meshfed-system"
    """The namespace of the manifests in deploy/kubernetes/."""
    eastwest_service: str = "meshfed-eastwest"
    """The LoadBalancer Service of deploy/kubernetes/services.yaml; its address is the site's gateway address."""
    owned_label: str = "multicluster.meshfed.io/managed-by"
    """Objects carrying this label are the agent's; it never creates, changes or deletes any other."""
    owned_value: str = "meshfed"
    """The label value that marks an object as owned."""
    egress_address: str = ""
    """Where pods reach the egress listeners when those listen on 0.0.0.0 or loopback: the pod IP
    (downward API, MESHFED_POD_IP in the Deployment); empty uses the listener's own address."""
    request_timeout: float = 10.0
    """Long enough for a loaded API server, short enough to notice a dead one before clients do."""
    watch_timeout: int = 300
    """Five minutes, the server-side watch timeout client-go uses; the watch is then resumed, not relisted."""
    backoff_base: float = 0.5
    """First reconnect delay; doubles with jitter up to backoff_cap."""
    backoff_cap: float = 30.0
    """Half a minute: a restarting API server is retried often without a thundering herd."""
    reconcile_delay: float = 0.2
    """Batches bursts of watch events (a rollout) into one reconcile."""
    resync: float = 300.0
    """A full re-plan every five minutes repairs owned objects changed by hand."""


def parse_kubernetes_settings(data: Mapping[str, Any], where: str) -> KubernetesSettings:
    """Validate the `kubernetes:` section; raise ConfigError(f"{where}.{field}: reason")."""
    settings = parse_section(KubernetesSettings, data, where, _field)
    if settings.backoff_base > settings.backoff_cap:
        raise ConfigError(f"{where}.backoff_base: {settings.backoff_base} exceeds backoff_cap {settings.backoff_cap}")
    return settings


def _field(key: str, value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false")
        return value
    if key == "watch_timeout":
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 3600:
            raise ConfigError(f"{where}: must be an integer number of seconds in 1..3600")
        return value
    if isinstance(default, float):
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}: must be a positive number of seconds")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a string")
    if key in ("namespace", "eastwest_service") and not _DNS_LABEL.match(value):
        raise ConfigError(f"{where}: {value!r} is not a DNS label")
    if key == "owned_label" and not _LABEL_KEY.match(value):
        raise ConfigError(f"{where}: {value!r} is not a label key")
    if key == "egress_address" and value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not an IP address") from None
    if key == "owned_value" and (not value or not _LABEL_VALUE.match(value)):
        raise ConfigError(f"{where}: {value!r} is not a non-empty label value")
    return value
