"""Refusal logs: one line per (kind, cause, peer) per minute, whatever the peer varies; every refusal counted."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.refusals import Refusals

HOST = "198.19.0.254"
SPIFFE = "spiffe://mesh.example/site/{}/gateway/gw"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        assert record.levelno == logging.WARNING
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Lines:
    handler = Lines()
    logger = logging.getLogger("test.refusals")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return handler


def refusals(registry: CollectorRegistry) -> Refusals:
    return Refusals(logging.getLogger("test.refusals"), Counter("r", "r", ["reason"], registry=registry))


def mixed_flood(r: Refusals, now: float, rounds: int = 20) -> None:
    """Every kind of refusal from one host, each reason varied by what the peer chooses, `rounds` times."""
    for i in range(rounds):
        r.refuse("handshake", "PEER_DID_NOT_RETURN_A_CERTIFICATE", HOST,
                 "TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE", now)
        r.refuse("handshake", "verify-20", HOST, "certificate not accepted: unable to get local issuer certificate", now)
        r.refuse("identity", "unknown-site", HOST,
                 f"peer {SPIFFE.format(f'n{i}')} claims site n{i}, which is not in the registry", now)
        r.refuse("identity", "unverified", HOST,
                 f"peer {SPIFFE.format('east')} does not verify through the CA that site east registered: #{i}", now)
        r.refuse("preamble", "bad-name", HOST, f"preamble service b'X{i}' is not a valid name", now)
        r.refuse("preamble", "timeout", HOST, "preamble did not finish in time", now)
        r.refuse("stream", "not-exported", HOST, f"{SPIFFE.format('west')}: shop/s{i} is not exported by east", now)
        r.refuse("stream", "no-ready-endpoint", HOST, f"{SPIFFE.format('west')}: shop/web has no ready endpoint", now)


FIRST_OF_EACH = [
    f"refused handshake from {HOST}: TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE",
    f"refused handshake from {HOST}: certificate not accepted: unable to get local issuer certificate",
    f"refused identity from {HOST}: peer {SPIFFE.format('n0')} claims site n0, which is not in the registry",
    f"refused identity from {HOST}: peer {SPIFFE.format('east')} does not verify through the CA that site east "
    "registered: #0",
    f"refused preamble from {HOST}: preamble service b'X0' is not a valid name",
    f"refused preamble from {HOST}: preamble did not finish in time",
    f"refused stream from {HOST}: {SPIFFE.format('west')}: shop/s0 is not exported by east",
    f"refused stream from {HOST}: {SPIFFE.format('west')}: shop/web has no ready endpoint",
]


def test_a_mixed_flood_from_one_host_logs_each_kind_once_a_minute(lines: Lines) -> None:
    registry = CollectorRegistry()
    r = refusals(registry)
    mixed_flood(r, now=100.0)
    assert lines.lines == FIRST_OF_EACH
    mixed_flood(r, now=159.0)  # within the minute: nothing new
    assert lines.lines == FIRST_OF_EACH
    mixed_flood(r, now=161.0)  # a minute later: each kind once more
    assert lines.lines == FIRST_OF_EACH * 2
    for kind in ("handshake", "identity", "preamble", "stream"):
        assert registry.get_sample_value("r_total", {"reason": kind}) == 3 * 20 * 2
    assert r.suppressed == 3 * 20 * 8 - 16


def test_one_kind_from_many_hosts_logs_once_per_host(lines: Lines) -> None:
    r = refusals(CollectorRegistry())
    hosts = [f"198.19.1.{i}" for i in range(1, 31)]
    for i in range(10):
        for host in hosts:
            r.refuse("identity", "unknown-site", host, f"peer {SPIFFE.format(f'x{i}')} claims site x{i}, which is "
                     "not in the registry", now=5.0)
    assert lines.lines == [
        f"refused identity from {host}: peer {SPIFFE.format('x0')} claims site x0, which is not in the registry"
        for host in hosts]


def test_the_cache_of_recent_lines_is_bounded(lines: Lines) -> None:
    r = Refusals(logging.getLogger("test.refusals"), Counter("r", "r", ["reason"], registry=CollectorRegistry()),
                 capacity=16)
    for i in range(1000):
        r.refuse("handshake", "timeout", f"198.19.{i // 250}.{i % 250}", "TLS handshake did not finish in time", 1.0)
    assert len(r._throttle) <= 16
