"""Settings of the Kubernetes source (the agent config's `kubernetes:` section)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from federation.core.settings import Invalid, dns_label, ip_network, optional_ip, setting

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?\Z")


def _label_key(value: str) -> str | None:
    return None if _LABEL_KEY.match(value) else f"{value!r} is not a label key"


def _label_value(value: str) -> str | None:
    return None if value and _LABEL_VALUE.match(value) else f"{value!r} is not a non-empty label value"


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    """How the agent reaches the Kubernetes API and which objects it owns there."""

    enabled: bool = False
    """Off unless asked for: a VM site has no API server."""
    kubeconfig: str = ""
    """Empty means in-cluster config (the pod's service account), which is how the Deployment runs."""
    context: str = ""
    """Empty means the kubeconfig's current context, as kubectl does."""
    namespace: str = setting("meshfed-system", check=dns_label)
    """The namespace of the manifests in deploy/kubernetes/."""
    eastwest_service: str = setting("meshfed-eastwest", check=dns_label)
    """The LoadBalancer Service of deploy/kubernetes/services.yaml; its address is the site's gateway address."""
    owned_label: str = setting("multicluster.meshfed.io/managed-by", check=_label_key)
    """Objects carrying this label are the agent's; it never creates, changes or deletes any other."""
    owned_value: str = setting("meshfed", check=_label_value)
    """The label value that marks an object as owned."""
    egress_address: str = setting("", check=optional_ip)
    """Where pods reach the egress listeners when those listen on 0.0.0.0 or loopback: the pod IP
    (downward API, MESHFED_POD_IP in the Deployment); empty uses the listener's own address."""
    endpoint_ranges: tuple[str, ...] = setting((), check=ip_network)
    """ClusterIPs for the per-endpoint Services of headless endpoints of other networks: a part of the
    service CIDR's static band (KEP-3070) that nothing else requests. Empty: off, as the CIDR is the cluster's."""
    request_timeout: float = setting(10.0, positive=True)
    """Long enough for a loaded API server, short enough to notice a dead one before clients do."""
    watch_timeout: int = setting(300, lo=1, hi=3600)
    """Five minutes, the server-side watch timeout client-go uses; the watch is then resumed, not relisted."""
    backoff_base: float = setting(0.5, positive=True)
    """First reconnect delay; doubles with jitter up to backoff_cap."""
    backoff_cap: float = setting(30.0, positive=True)
    """Half a minute: a restarting API server is retried often without a thundering herd."""
    reconcile_delay: float = setting(0.2, positive=True)
    """Batches bursts of watch events (a rollout) into one reconcile."""
    resync: float = setting(300.0, positive=True)
    """A full re-plan every five minutes repairs owned objects changed by hand."""
    policies: bool = True
    """Sync TrafficPolicy and AccessPolicy objects (deploy/kubernetes/policy-crds.yaml, access-crds.yaml) into
    the registry: on by default, as kustomization.yaml installs their CRDs."""
    operator_key_dir: str = ""
    """A directory with operator.crt and operator.key (0600) from `meshfed ca operator`, mounted from a Secret,
    that signs the synced policies; empty: none, so with registry.signatures: require nothing is synced."""

    def validate(self) -> None:
        """Checks between fields."""
        if self.backoff_base > self.backoff_cap:
            raise Invalid("backoff_base", f"{self.backoff_base} exceeds backoff_cap {self.backoff_cap}")
