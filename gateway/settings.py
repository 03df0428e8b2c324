"""Settings of the gateway data plane (east-west listener, egress, certificates): the `gateway:` config section."""

from __future__ import annotations

from dataclasses import dataclass

from federation.core.settings import Invalid, dns_label, ip_address, setting
from federation.runtime.values import Readable, Value


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway listens, relays, pools tunnels and rotates its certificate."""

    name: str = setting("gateway", check=dns_label)
    """This gateway's name in its SPIFFE ID; one per site is the common case, so a fixed name will do."""
    listen_address: str = setting("0.0.0.0", check=ip_address)  # noqa: S104 - reached from other networks
    """All interfaces: the east-west gateway is what other networks reach."""
    listen_port: int = setting(15443, lo=0, hi=65535)
    """The port Istio's east-west gateways use, so existing firewall rules carry over."""
    workers: int = setting(1, lo=1, hi=64)
    """One process is enough for most sites; raise it (SO_REUSEPORT) when TLS uses a whole core."""
    handshake_timeout: float = setting(10.0, positive=True)
    """Long enough for a handshake across continents, short enough that idle sockets do not pile up."""
    preamble_timeout: float = setting(5.0, positive=True)
    """A peer sends the preamble right after its first byte; seconds more means a stuck or hostile peer."""
    tunnel_idle_timeout: float = setting(90.0, positive=True)
    """An authenticated tunnel may wait this long for its next stream; longer than the egress pool idle."""
    idle_timeout: float = setting(3600.0, positive=True)
    """A relayed stream with no byte either way for an hour is dead (like a TCP keepalive would find)."""
    connect_timeout: float = setting(5.0, positive=True)
    """An endpoint that has not accepted within 5 s is treated as refused and the next one tried."""
    egress_address: str = setting("127.0.0.1", check=ip_address)
    """Egress listeners are for local clients only unless the operator opens them wider."""
    egress_port: int = setting(0, lo=0, hi=65535)
    """0: the kernel picks a port per service port; the agent reports the chosen ones."""
    pool_size: int = setting(4, lo=0, hi=1024)
    """Pre-opened tunnels per peer gateway: covers bursts of new connections without a handshake."""
    pool_max: int = setting(64, lo=0, hi=65536)
    """Idle tunnels kept per peer gateway after a burst, so the next burst needs no handshake either."""
    tunnel_max_age: float = setting(3600.0, positive=True)
    """A tunnel is not reused after an hour, so pooled tunnels soon carry renewed certificates."""
    pool_idle: float = setting(60.0, positive=True)
    """An unused pooled tunnel is closed after this, before the peer's tunnel_idle_timeout does."""
    cert_lifetime: float = setting(86400.0, lo=60.0)
    """24 h leaves (DESIGN.md): short enough that a leaked key expires soon, renewed at half life."""
    ca_dir: str = ""
    """Directory from `meshfed ca site` (site.crt, site.key, trust-bundle.pem); required to run a gateway."""
    ca_reload_interval: float = setting(60.0, lo=0.0, hi=86400.0)
    """Seconds between looks at `ca_dir` for a replaced site CA (a rotation; SIGHUP looks at once); 0: only
    on SIGHUP. A minute: Kubernetes takes about that long to update a mounted Secret anyway."""
    cert_dir: str = ""
    """Where the agent writes the gateway leaf (0600); empty means a private directory of its own."""
    drain_timeout: float = setting(5.0, lo=0.0, hi=3600.0)
    """Seconds a stopping agent lets relayed streams finish after it stops accepting: Istio's drain default."""
    max_connections: int = setting(8192, lo=1, hi=1_000_000)
    """Client connections (egress) or tunnels (gateway) at once; beyond, reset at once: 16k descriptors, ~320 MiB."""
    accept_rate: float = setting(2000.0, positive=True)
    """New connections accepted per second; beyond, reset at once, so the registry, DNS and checks keep up."""
    accept_burst: int = setting(1000, lo=1, hi=1_000_000)
    """New connections accepted at once above the rate after a quiet spell (a client pool opening)."""
    read_size: int = setting(256 * 1024, lo=4096, hi=16 * 1024 * 1024)
    """Bytes per read into the one buffer a process shares: large reads cut Python's cost per byte."""
    high_water: int = setting(1024 * 1024, lo=16 * 1024, hi=64 * 1024 * 1024)
    """Bytes queued towards a slow side before the other stops reading; bulk streams need room in flight."""
    probe_interval: float = setting(5.0, lo=0.0, hi=3600.0)
    """Seconds between probes of each remote gateway (jittered by a fifth); 0: no probes. linkerd's default is
    a few seconds: a dead gateway shows within one interval."""
    probe_rate: float = setting(10.0, positive=True)
    """Probes started per second at most: a probe costs ~7 ms of CPU for both ends (tests/bench/probing.py), so
    this is ~3% of a core here and at each gateway of a 1,000-site mesh, whose round then takes 100 s."""
    probe_concurrency: int = setting(16, lo=1, hi=1024)
    """Probes in flight at once: a gateway that never answers holds one slot for its timeout, not the round."""

    def validate(self) -> None:
        """Checks between fields."""
        if self.pool_max < self.pool_size:
            raise Invalid("pool_max", f"must be at least pool_size ({self.pool_size})")
        if self.pool_idle >= self.tunnel_idle_timeout:
            raise Invalid("pool_idle", "must be below tunnel_idle_timeout or peers close pooled tunnels")


def live(settings: GatewaySettings | Readable[GatewaySettings] | None) -> Readable[GatewaySettings]:
    """A holder of the settings a part reads at every use (a reload replaces them); plain settings stay fixed."""
    if settings is None:
        return Value(GatewaySettings(), name="gateway settings")
    if isinstance(settings, GatewaySettings):
        return Value(settings, name="gateway settings")
    return settings
