"""Settings of the gateway data plane (east-west listener, egress, certificates): the `gateway:` config section."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from federation.core.errors import ConfigError
from federation.core.settings import parse_section


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway listens, relays, pools tunnels and rotates its certificate."""

    name: str = "gateway"
    """This gateway's name in its SPIFFE ID; one per site is the common case, so a fixed name will do."""
    listen_address: str = "0.0.0.0"  # noqa: S104 - the gateway exists to be reached from other networks
    """All interfaces: the east-west gateway is what other networks reach."""
    listen_port: int = 15443
    """The port Istio's east-west gateways use, so existing firewall rules carry over."""
    workers: int = 1
    """One process is enough for most sites; raise it (SO_REUSEPORT) when TLS uses a whole core."""
    handshake_timeout: float = 10.0
    """Long enough for a handshake across continents, short enough that idle sockets do not pile up."""
    preamble_timeout: float = 5.0
    """A peer sends the preamble right after its first byte; seconds more means a stuck or hostile peer."""
    tunnel_idle_timeout: float = 90.0
    """An authenticated tunnel may wait this long for its next stream; longer than the egress pool idle."""
    idle_timeout: float = 3600.0
    """A relayed stream with no byte either way for an hour is dead (like a TCP keepalive would find)."""
    connect_timeout: float = 5.0
    """An endpoint that has not accepted within 5 s is treated as refused and the next one tried."""
    egress_address: str = "127.0.0.1"
    """Egress listeners are for local clients only unless the operator opens them wider."""
    egress_port: int = 0
    """0: the kernel picks a port per service port; the agent reports the chosen ones."""
    pool_size: int = 4
    """Pre-opened tunnels per peer gateway: covers bursts of new connections without a handshake."""
    pool_max: int = 64
    """Idle tunnels kept per peer gateway after a burst, so the next burst needs no handshake either."""
    tunnel_max_age: float = 3600.0
    """A tunnel is not reused after an hour, so pooled tunnels soon carry renewed certificates."""
    pool_idle: float = 60.0
    """An unused pooled tunnel is closed after this, before the peer's tunnel_idle_timeout does."""
    cert_lifetime: float = 86400.0
    """24 h leaves (DESIGN.md): short enough that a leaked key expires soon, renewed at half life."""
    ca_dir: str = ""
    """Directory from `meshfed ca site` (site.crt, site.key, trust-bundle.pem); required to run a gateway."""
    cert_dir: str = ""
    """Where the agent writes the gateway leaf (0600); empty means a private directory of its own."""


_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_POSITIVE = {
    "workers", "handshake_timeout", "preamble_timeout", "tunnel_idle_timeout", "idle_timeout",
    "connect_timeout", "pool_idle", "cert_lifetime", "tunnel_max_age",
}


def parse_gateway_settings(data: Mapping[str, Any], where: str) -> GatewaySettings:
    """Settings from the `gateway:` config mapping; ConfigError names `where.field` and the reason."""
    types = {f.name: f.type for f in dataclasses.fields(GatewaySettings)}

    def field(name: str, value: Any, _default: Any, at: str) -> Any:
        parsed = _coerce(at, types[name], value)
        if name in _POSITIVE and parsed <= 0:
            raise ConfigError(f"{at}: must be greater than 0")
        return parsed

    settings = parse_section(GatewaySettings, data, where, field)
    for name in ("listen_port", "egress_port"):
        port = getattr(settings, name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"{where}.{name}: {port} is not a TCP port (0-65535)")
    if not _LABEL.match(settings.name):
        raise ConfigError(f"{where}.name: {settings.name!r} is not a DNS label")
    if settings.pool_size < 0:
        raise ConfigError(f"{where}.pool_size: must be 0 or more")
    if settings.pool_max < settings.pool_size:
        raise ConfigError(f"{where}.pool_max: must be at least pool_size ({settings.pool_size})")
    for name in ("listen_address", "egress_address"):
        try:
            ipaddress.ip_address(getattr(settings, name))
        except ValueError:
            raise ConfigError(f"{where}.{name}: {getattr(settings, name)!r} is not an IP address") from None
    if settings.pool_idle >= settings.tunnel_idle_timeout:
        raise ConfigError(f"{where}.pool_idle: must be below tunnel_idle_timeout or peers close pooled tunnels")
    return settings


def _coerce(where: str, type_name: Any, value: Any) -> Any:
    if type_name in ("int", int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {value!r} is not an integer")
        return value
    if type_name in ("float", float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {value!r} is not a number")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} is not a string")
    return value
