"""Metrics and rate-limited refusal logs shared by the gateway and the egress."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Hashable

from prometheus_client import CollectorRegistry, Counter, Gauge

from federation.core.ratelimit import LogLimiter


class Throttle(LogLimiter):
    """federation's LogLimiter (one line per key per `interval`, at most `capacity` keys), reading the
    clock itself, with a `log` shortcut."""

    def allow(self, key: Hashable, now: float | None = None) -> bool:
        """True if a line for `key` may be logged now."""
        return super().allow(key, time.monotonic() if now is None else now)

    def log(self, logger: logging.Logger, level: int, key: Hashable, msg: str, *args: object) -> None:
        """Log `msg % args` at `level` unless a line for `key` was logged recently."""
        if logger.isEnabledFor(level) and self.allow(key):
            logger.log(level, msg, *args)


class Refusals:
    """Logs each refusal with its reason, at most once per (kind, cause, peer host) per `interval`; counts all.

    `cause` names the kind of reason (a missing certificate, a foreign CA, an unknown site, a service
    not exported...) from a fixed set chosen by our code, never text the peer controls: so different
    attacks from one host each get their line, one attack from many hosts a line per host (at most
    `capacity` keys are remembered), and what a peer varies (service names, SPIFFE IDs) cannot
    multiply the lines."""

    def __init__(self, logger: logging.Logger, counter: Counter, interval: float = 60.0,
                 capacity: int = 1024) -> None:
        self._log = logger
        self._counter = counter
        self._throttle = Throttle(interval, capacity)

    @property
    def suppressed(self) -> int:
        """Refusals counted but not logged because one like them was logged recently."""
        return self._throttle.suppressed

    def refuse(self, kind: str, cause: str, peer: str, reason: str, now: float | None = None) -> None:
        """Count a refusal of `kind` and log it with `reason` unless one of the same kind and cause from
        `peer` was logged recently."""
        self._counter.labels(kind).inc()
        if self._throttle.allow((kind, cause, peer), now):
            self._log.warning("refused %s from %s: %s", kind, peer, reason)


def handshake_cause(exc: BaseException) -> str:
    """The kind of a failed handshake: OpenSSL's verify code or reason name (a fixed set), else the error type."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"verify-{exc.verify_code}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or type(exc).__name__)
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "timeout"
    return type(exc).__name__


def handshake_reason(exc: BaseException) -> str:
    """What a failed handshake's refusal line says."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "TLS handshake did not finish in time"
    return f"TLS handshake failed: {exc!r}"


class GatewayMetrics:
    """The east-west gateway's metrics, registered in the agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handshakes = Counter("meshfed_gateway_handshakes_total", "TLS handshakes by result",
                                  ["result"], registry=registry)
        self.refusals = Counter("meshfed_gateway_refusals_total", "Connections or streams refused, by reason",
                                ["reason"], registry=registry)
        self.streams = Counter("meshfed_gateway_streams_total", "Stream requests by status",
                               ["status"], registry=registry)
        self.tunnels = Gauge("meshfed_gateway_tunnels", "Authenticated tunnels open", registry=registry)
        self.ended = Counter("meshfed_gateway_tunnels_ended_total",
                             "Tunnels the gateway closed because the peer's certificate expired or its site left",
                             ["reason"], registry=registry)
        self.bytes = Counter("meshfed_gateway_bytes_total", "Bytes relayed, counted when a stream ends",
                             ["direction"], registry=registry)


class EgressMetrics:
    """The egress's metrics, registered in the agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.listeners = Gauge("meshfed_egress_listeners", "Egress listeners open", registry=registry)
        self.mode = Gauge("meshfed_egress_mode", "1 for the mode the egress runs in: capture (one listener for "
                          "every VIP) or listeners (one per service port)", ["mode"], registry=registry)
        self.captured = Gauge("meshfed_egress_captured_destinations",
                              "VIP:port destinations the capture listener serves", registry=registry)
        self.connections = Counter("meshfed_egress_connections_total", "Client connections by outcome",
                                   ["result"], registry=registry)
        self.attempts = Counter("meshfed_egress_attempts_total", "Route attempts by kind and outcome",
                                ["route", "result"], registry=registry)
        self.handshakes = Counter("meshfed_egress_handshakes_total", "Tunnel handshakes by result",
                                  ["result"], registry=registry)
        self.reused = Counter("meshfed_egress_tunnel_reuses_total", "Streams that used a pooled tunnel",
                              registry=registry)
        self.refusals = Counter("meshfed_egress_refusals_total", "Peers refused, by reason", ["reason"],
                                registry=registry)


class PolicyMetrics:
    """What traffic policies did to new connections, registered in the agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.actions = Counter(
            "meshfed_egress_policy_actions_total",
            "Traffic-policy actions on new connections: retry, ejected_endpoint, ejected_gateway, ejection_capped, "
            "breaker_service, breaker_site, budget_spent, fault_delay, fault_abort, max_duration, hedge, hedge_won",
            ["action"], registry=registry)
