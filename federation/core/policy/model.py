"""The `TrafficPolicy` model: one mesh-wide policy per service, every field with its default and why.

Pure data. Decoding and validation live in `federation.core.policy.codec`; docs/traffic.md explains each
field in an operator's words. Durations are seconds, percentages are 0..100.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from federation.core.records import Labels

API_VERSION = "meshfed.io/v1alpha1"
KIND = "TrafficPolicy"

SITE, NETWORK, REGION, ZONE = "site", "network", "region", "zone"
TOPOLOGY_KEYS = (SITE, NETWORK, REGION, ZONE)
"""What `failoverPriority` may compare besides endpoint labels (`key=value`)."""


class Spill(enum.StrEnum):
    """How traffic moves from a nearer priority level to the next one as the nearer one loses endpoints."""

    GRADUAL = "Gradual"
    """Envoy's priority levels with overprovisioning 1.4: a level keeps all traffic while >= 71.4 % of its
    endpoints are healthy, then spills the share it cannot carry to the next level."""
    STRICT = "Strict"
    """Consul/Cilium style: the nearest level with any healthy endpoint gets all traffic."""


class AbortKind(enum.StrEnum):
    """How an injected abort ends a client connection."""

    REFUSE = "Refuse"
    """Reset the client at once, before any upstream connect: what a dead service looks like."""
    RESET = "Reset"
    """Connect upstream, then reset both sides before relaying a byte: what a crashing service looks like."""


class PartitionMode(enum.StrEnum):
    """What an agent does with a service while the registry is unreachable or a site is stale."""

    KEEP_SERVING = "KeepServing"
    """Keep using the last known endpoints (DESIGN.md: every agent keeps serving its last known state)."""
    STOP_AFTER = "StopAfter"
    """Keep serving for `partition.after`, then refuse new connections until the registry is back."""
    FAIL_CLOSED = "FailClosed"
    """Refuse new connections as soon as the state is stale: for services where stale routing is worse."""


@dataclass(frozen=True, slots=True)
class FailoverRule:
    """Explicit region failover (Istio `failover`): clients in `from_region` try `to_region` before others."""

    from_region: str
    """Required: the clients' region."""
    to_region: str
    """Required: the region they try next, before any other."""


@dataclass(frozen=True, slots=True)
class DistributeRule:
    """Locality weights for clients in `from_pattern` (`region/zone`, `*` wildcards), Istio `distribute`.

    `to` is ((pattern, weight), ...) with weights summing to 100. Localities it does not list are not
    black-holed: they are the failover for when every listed one is unhealthy.
    """

    from_pattern: str
    """Required: the clients' locality (`eu`, `eu/*`, `eu/eu-1a`, `*`)."""
    to: tuple[tuple[str, float], ...]
    """Required: (locality pattern, weight) pairs; weights sum to 100."""


@dataclass(frozen=True, slots=True)
class LocalityPolicy:
    """Nearest-first routing with failover. Failover is always on: it needs no other setting to work."""

    failover_priority: tuple[str, ...] = (NETWORK, REGION, ZONE)
    """Own network first (no tunnel), then own region, then own zone: what meshfed did before policies."""
    failover: tuple[FailoverRule, ...] = ()
    """None: with no healthy endpoint in its region a client goes to the next nearest, as without rules."""
    distribute: tuple[DistributeRule, ...] = ()
    """None: all traffic goes to the nearest healthy level; weights across localities are an opt-in."""
    spill: Spill = Spill.GRADUAL
    """Gradual, as Envoy: the few survivors of a failing site are not handed its whole load at once."""


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive ejection of endpoints and gateways that fail connects, per service."""

    enabled: bool = True
    """On: a connect failure is hard evidence for TCP, and without ejection every client keeps paying a retry."""
    consecutive_connect_failures: int = 3
    """Three in a row ejects an endpoint: one lost SYN or one restart does not, a dead endpoint soon does."""
    consecutive_gateway_errors: int = 2
    """A gateway serves every endpoint behind it, so it goes after two (TCP, TLS or preamble) failures."""
    base_ejection_time: float = 30.0
    """Envoy, Istio and Consul all use 30 s; the time grows with each ejection (base x ejections)."""
    max_ejection_time: float = 300.0
    """Envoy's cap: a flapping endpoint is out for at most 5 minutes at a time."""
    max_ejection_percent: float = 50.0
    """At most half of a service's endpoints go on passive evidence (at least one always may): a site's
    2-6 endpoints make Istio's 10 % mean one; more than half failing points at our side, not theirs."""
    panic_threshold: float = 0.0
    """Off, as in Istio: across sites the survivors are usually a whole other site, and panic would send
    traffic back to endpoints seen failing. Gateways ejected are never revived by panic."""


@dataclass(frozen=True, slots=True)
class ActiveHealth:
    """Probes through the tunnel to each gateway for each imported service (the probe comes in phase 2)."""

    enabled: bool = True
    """On: without it a dead site is found only by client traffic (linkerd-failover#63, cilium#19217)."""
    interval: float = 1.0
    """Submariner's 1 s: with two failures a dead site is out within ~3 s, inside the 5 s goal."""
    timeout: float = 1.0
    """No longer than the interval, so one probe ends before the next is due."""
    unhealthy_threshold: int = 2
    """Two failures: one lost probe does not take a site out of DNS answers."""
    healthy_threshold: int = 2
    """Two passes: one lucky probe does not bring back a flapping site (as the VM checks' rise)."""


@dataclass(frozen=True, slots=True)
class SplitTarget:
    """A share of the connections for the endpoints of `site` (if set) having all of `labels` (if set)."""

    weight: float
    """Required: the share of new connections (0..100; all targets sum to 100; 0 drains the target)."""
    site: str | None = None
    """Any site: a split by labels alone spans every site."""
    labels: Labels = ()
    """Any labels: a split by site alone takes all of that site's endpoints."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Connect and connection lifetime limits."""

    connect: float = 10.0
    """Istio's connect timeout, here the total a client waits across every try before it is reset."""
    connect_per_try: float = 3.0
    """One try (TCP, or a tunnel stream with its preamble): 3 s covers a handshake across continents and
    leaves room for two more tries within `connect`. Retries use this too (one place, not two)."""
    idle: float = 3600.0
    """An hour, as Envoy and Istio: an idle connection that long is dead; 0 is refused (it leaks)."""
    max_connection_duration: float | None = None
    """No limit: TCP connections (database pools) live long on purpose; set it to force rebalancing."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry n: a random time in [0, min(max, base x 2**(n-1))] (full jitter)."""

    base: float = 0.025
    """Envoy's 25 ms: a retry to another endpoint needs no long wait, only decorrelation."""
    max: float = 0.25
    """Envoy's 10 x base: retries stay well inside one per-try timeout."""


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """At most `percent` of a service's connections in progress may be retries, but always `min_retries`."""

    percent: float = 20.0
    """Envoy's 20 %: during an outage retries add at most a fifth to the load, never multiply it."""
    min_retries: int = 3
    """Envoy's 3: a service with few connections can still retry (a budget of 20 % of 2 would be 0)."""


@dataclass(frozen=True, slots=True)
class Hedge:
    """Hedged connects through gateways (Happy Eyeballs, RFC 8305): a try whose gateway has not answered
    within a few times its recent answer time is raced by a try on the next route; the first answer wins."""

    enabled: bool = True
    """On: a black-holed gateway costs a client the hedge delay, not the per-try timeout, and nothing has
    reached the application yet, so a second try cannot duplicate a byte; it counts as a retry (budget)."""
    min_delay: float = 0.25
    """RFC 8305's Connection Attempt Delay: below it a busy host's own scheduling would start needless
    hedges; the delay is 3 x the gateway's recent p95 answer time when that is longer."""


@dataclass(frozen=True, slots=True)
class Retries:
    """Retries before the first byte: a connect that failed is tried again on a new pick."""

    attempts: int = 3
    """Three tries in all: a dead endpoint and a dead site can both be absorbed (Envoy's default is 1)."""
    backoff: Backoff = Backoff()
    """See Backoff."""
    budget: RetryBudget = RetryBudget()
    """See RetryBudget."""
    hedge: Hedge = Hedge()
    """On; see Hedge."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Circuit-breaker limits; None means no limit (0 is refused: it would refuse everything)."""

    max_connections: int | None = None
    """No limit: TCP connections are long-lived, and a count that trips in normal use is an outage."""
    max_pending_connects: int | None = 1024
    """Envoy's 1024: connects that pile up are the sign of a dead or slow target; beyond it new
    clients are reset at once instead of exhausting file descriptors."""


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Limits per service and per remote site of the service."""

    service: Limits = Limits()
    """See Limits; over a service limit a new client is reset at once."""
    per_site: Limits = Limits(max_pending_connects=256)
    """One black-holed site may hold at most 256 pending connects, so it cannot use up the service's
    1024; over a site limit that site is skipped for the pick, not the client reset."""


@dataclass(frozen=True, slots=True)
class Delay:
    """Delay `percent` of the connections by `fixed` before connecting upstream."""

    fixed: float
    """Required: how long; no default, a drill must say what it injects."""
    percent: float
    """Required: of which connections; no default, so a fault is never 100 % by omission."""


@dataclass(frozen=True, slots=True)
class Abort:
    """Abort `percent` of the connections the way `kind` says."""

    kind: AbortKind
    """Required: Refuse or Reset, see AbortKind."""
    percent: float
    """Required, for the same reason as Delay.percent."""


@dataclass(frozen=True, slots=True)
class FaultRule:
    """Injected faults for connections from `source_sites` to `destination_sites` (empty: all)."""

    source_sites: tuple[str, ...] = ()
    """Every site: a drill scoped to one source names it."""
    destination_sites: tuple[str, ...] = ()
    """Every site the connection may be routed to."""
    delay: Delay | None = None
    """None; a rule needs a delay, an abort, or both."""
    abort: Abort | None = None
    """None; see delay."""


@dataclass(frozen=True, slots=True)
class Partition:
    """Behaviour while the registry is unreachable or a site is stale."""

    mode: PartitionMode = PartitionMode.KEEP_SERVING
    """Keep serving: endpoints rarely all move during an etcd outage, and refusing would turn a control
    plane outage into a data plane one."""
    after: float | None = None
    """Only for StopAfter (required there): how long stale endpoints stay in use."""


@dataclass(frozen=True, slots=True)
class Rules:
    """The controls that may differ per port."""

    locality: LocalityPolicy = LocalityPolicy()
    """Nearest first with failover; see LocalityPolicy."""
    outlier_detection: OutlierDetection = OutlierDetection()
    """On; see OutlierDetection."""
    active_health: ActiveHealth = ActiveHealth()
    """On; see ActiveHealth."""
    split: tuple[SplitTarget, ...] = ()
    """No split: every endpoint may serve, nearest first."""
    timeouts: Timeouts = Timeouts()
    """See Timeouts."""
    retries: Retries = Retries()
    """See Retries."""
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    """See CircuitBreaker."""
    faults: tuple[FaultRule, ...] = ()
    """No faults, ever, unless an operator writes them."""


DEFAULT_RULES = Rules()
"""The rules of a service without a TrafficPolicy: every default, the same object an empty spec gets. Hedged
connects, retries within the budget, outlier ejection and the per-try timeout never wait for a policy object
to exist (Istio's failover silently needs outlierDetection: istio#48084)."""


@dataclass(frozen=True, slots=True)
class PortRules:
    """The rules for one service port (a name or a number), fully resolved."""

    port: str | int
    """The service port's name, or its number."""
    rules: Rules
    """The service's rules with this port's entry laid over them, field by field."""


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """The traffic policy of the service `namespace/name` (one per service: no precedence to learn)."""

    namespace: str
    """The service's namespace (metadata.namespace)."""
    name: str
    """The service's name (metadata.name)."""
    rules: Rules = DEFAULT_RULES
    """Every default: an empty spec is a valid policy, and a service without one is routed by the same rules."""
    ports: tuple[PortRules, ...] = ()
    """No per-port entries: every port follows `rules`."""
    partition: Partition = Partition()
    """Keep serving; see Partition."""

    def rules_for(self, port_name: str, port_number: int = 0) -> Rules:
        """The rules for a port: its own entry (by name, then by number) or the service's."""
        for p in self.ports:
            if p.port == port_name:
                return p.rules
        for p in self.ports:
            if isinstance(p.port, int) and p.port == port_number:
                return p.rules
        return self.rules
