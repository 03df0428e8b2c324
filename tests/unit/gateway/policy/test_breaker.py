"""Circuit-breaker accounting: admit or reject at once, per service and per site, with counters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from federation.core.policy.model import CircuitBreaker, Limits
from gateway.policy.breaker import Breaker, Verdict, limits_text


def test_over_the_service_connection_limit_a_client_is_rejected_at_once() -> None:
    b = Breaker(CircuitBreaker(service=Limits(max_connections=2)))
    assert b.open() is Verdict.OK
    assert b.open() is Verdict.OK
    verdict = b.open()
    assert verdict is Verdict.SERVICE_CONNECTIONS
    assert verdict.rejects_client
    assert b.rejected[Verdict.SERVICE_CONNECTIONS] == 1
    b.close()
    assert b.open() is Verdict.OK


def test_a_site_over_its_pending_limit_is_skipped_not_the_client() -> None:
    b = Breaker(CircuitBreaker(service=Limits(max_pending_connects=10), per_site=Limits(max_pending_connects=1)))
    assert b.connecting("east") is Verdict.OK
    verdict = b.connecting("east")
    assert verdict is Verdict.SITE_PENDING
    assert not verdict.rejects_client
    assert b.connecting("west") is Verdict.OK
    b.connect_failed("east")
    assert b.connecting("east") is Verdict.OK


def test_site_connections_count_until_disconnected() -> None:
    b = Breaker(CircuitBreaker(per_site=Limits(max_connections=1, max_pending_connects=None)))
    assert b.connecting("east") is Verdict.OK
    b.connected("east")
    assert b.site_connections["east"] == 1
    assert b.connecting("east") is Verdict.SITE_CONNECTIONS
    b.disconnected("east")
    assert "east" not in b.site_connections
    assert b.connecting("east") is Verdict.OK


def test_new_limits_do_not_cut_what_is_open() -> None:
    b = Breaker(CircuitBreaker())
    for _ in range(5):
        b.open()
    b.update(CircuitBreaker(service=Limits(max_connections=2)))
    assert b.connections == 5
    assert b.open() is Verdict.SERVICE_CONNECTIONS
    assert limits_text(b.settings.service) == "connections 2, pending 1024"


limit_values = st.none() | st.integers(1, 4)


@given(st.lists(st.tuples(st.sampled_from(["open", "close", "connect", "ok", "fail", "drop"]),
                          st.sampled_from(["east", "west"])), max_size=100),
       limit_values, limit_values, limit_values, limit_values)
def test_counts_never_exceed_limits_nor_go_negative(ops: list[tuple[str, str]], svc_conn: int | None,
                                                    svc_pend: int | None, site_conn: int | None,
                                                    site_pend: int | None) -> None:
    settings = CircuitBreaker(Limits(svc_conn, svc_pend), Limits(site_conn, site_pend))
    b = Breaker(settings)
    pending: list[str] = []
    connected: list[str] = []
    clients, rejections = 0, 0
    for op, site in ops:
        if op == "open":
            if b.open() is Verdict.OK:
                clients += 1
            else:
                rejections += 1
        elif op == "close" and clients:
            b.close()
            clients -= 1
        elif op == "connect":
            if b.connecting(site) is Verdict.OK:
                pending.append(site)
            else:
                rejections += 1
        elif op in ("ok", "fail") and site in pending:
            pending.remove(site)
            if op == "ok":
                b.connected(site)
                connected.append(site)
            else:
                b.connect_failed(site)
        elif op == "drop" and site in connected:
            connected.remove(site)
            b.disconnected(site)
        assert b.connections == clients
        assert b.pending == len(pending)
        assert sum(b.rejected.values()) == rejections
        for s in ("east", "west"):
            assert b.site_pending[s] == pending.count(s)
            assert b.site_connections[s] == connected.count(s)
            if site_pend is not None:
                assert pending.count(s) <= site_pend
            if site_conn is not None:
                assert connected.count(s) <= site_conn
        if svc_conn is not None:
            assert clients <= svc_conn
        if svc_pend is not None:
            assert len(pending) <= svc_pend
