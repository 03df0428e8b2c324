"""The prober's pure parts: the latency window, a gateway's state, and which gateways are probed."""

from __future__ import annotations

from federation.core.records import Endpoint, Gateway, ServiceExport, ServicePort, Site
from federation.core.view import MeshView
from gateway.probing import GatewayState, LatencyWindow, ProbeResult, probe_targets


def test_the_window_keeps_a_minute_and_gives_nearest_rank_quantiles() -> None:
    w = LatencyWindow(60.0)
    for i in range(100):
        w.add(1000.0 + i * 0.1, (i + 1) / 1000)  # 1..100 ms within 10 s
    q = w.quantiles(1010.0)
    assert q == {"p50": 0.05, "p95": 0.095, "p99": 0.099, "samples": 100.0}
    w.add(1075.0, 0.5)
    assert w.quantiles(1075.0) == {"p50": 0.5, "p95": 0.5, "p99": 0.5, "samples": 1.0}  # the old ones are gone
    assert w.quantiles(1200.0) is None


def test_a_gateway_goes_down_with_its_reason_and_back_up() -> None:
    g = GatewayState("east", Gateway("gateway", "198.18.0.1", 15443))
    assert g.alive is None
    assert g.describe(0.0, None, [])["state"] == "UNKNOWN"
    g.record(ProbeResult(True, handshake=0.004, rtt=0.001, skew=0.2, at=100.0))
    g.record(ProbeResult(False, "connection refused (no gateway listening there)", at=105.0))
    g.record(ProbeResult(False, "connection refused (no gateway listening there)", at=110.0))
    d = g.describe(110.0, None, ["shop/web"])
    assert (d["state"], d["alive"], d["failures"], d["since"]) == ("DOWN", False, 2, 105.0)
    assert d["reason"].startswith("connection refused")
    assert d["latencyMs"]["p99"] == 1.0  # the latencies of the last minute stay
    assert d["services"] == ["shop/web"]
    assert d["tunnels"] == {"pooled": 0, "open": 0}
    g.record(ProbeResult(True, rtt=0.002, skew=-0.1, at=115.0))
    d = g.describe(115.0, None, [])
    assert (d["state"], d["failures"], d["since"], d["clockSkewSeconds"]) == ("ALIVE", 0, 115.0, -0.1)


def _export(site: str, name: str) -> ServiceExport:
    return ServiceExport(site, "shop", name, (ServicePort("http", 80),), endpoints=(Endpoint(("10.0.0.1",)),))


def test_only_gateways_of_sites_we_import_from_are_probed() -> None:
    gw = Gateway("gateway", "198.18.0.2", 15443)
    view = MeshView(sites={"west": Site("west", "n1", gateways=(gw,)), "east": Site("east", "n2", gateways=(gw,)),
                           "idle": Site("idle", "n3", gateways=(gw,)), "bare": Site("bare", "n4")},
                    exports={("west", "shop", "web"): _export("west", "web"),
                             ("east", "shop", "web"): _export("east", "web"),
                             ("east", "shop", "cart"): _export("east", "cart"),
                             ("bare", "shop", "web"): _export("bare", "web")})
    targets = probe_targets(view, "west")
    assert list(targets) == [("east", "gateway")]  # not ourselves, not a site without exports or gateway
    assert targets[("east", "gateway")][2] == ["shop/cart", "shop/web"]
