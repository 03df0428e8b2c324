"""`meshfed explain`'s pure core: names, DNS answers and the route order with its reasons."""

from __future__ import annotations

import pytest

from federation.agent.explaining import explain, parse_name
from federation.core.errors import ConfigError
from federation.core.policy.access import AccessState
from federation.core.records import Endpoint, Gateway, Locality, ServiceExport, ServicePort, Site
from federation.core.view import MeshView


def test_names_in_the_zone_and_ns_name() -> None:
    q = parse_name("web.shop.svc.clusterset.local.", "clusterset.local", "west", None)
    assert (q.namespace, q.name, q.hostname) == ("shop", "web", None)
    q = parse_name("pod-0.db.shop.svc.clusterset.local", "clusterset.local", "west", "5432")
    assert (q.namespace, q.name, q.hostname, q.port) == ("shop", "db", "pod-0", "5432")
    assert parse_name("shop/web", "clusterset.local", "west", None).qname == "web.shop.svc.clusterset.local"
    with pytest.raises(ConfigError, match="not in the federated zone"):
        parse_name("www.example.com", "clusterset.local", "west", None)


def _view() -> MeshView:
    port = (ServicePort("http", 80),)
    ep = (Endpoint(("10.0.0.5",)),)
    gw = (Gateway("gateway", "198.18.0.2", 15443),)
    return MeshView(
        sites={"west": Site("west", "n1", Locality("r1", "z1")),
               "near": Site("near", "n2", Locality("r1", "z1"), gateways=gw),
               "far": Site("far", "n3", Locality("r2", "z9"), gateways=gw),
               "lan": Site("lan", "n1", Locality("r1", "z2")),
               "dark": Site("dark", "n4")},
        exports={(s, "shop", "web"): ServiceExport(s, "shop", "web", port, endpoints=ep)
                 for s in ("far", "near", "lan", "dark")})


def test_routes_are_listed_in_the_order_tried_with_why_and_what_was_left_out() -> None:
    q = parse_name("shop/web", "clusterset.local", "west", None)
    out = explain(_view(), "west", q, {("shop", "web"): ("240.240.0.7",)}, AccessState(), "mesh.example",
                  {"near": "ALIVE", "far": "DOWN"})
    steps = {s["step"]: s for s in out["steps"]}
    assert steps["dns"]["answer"] == "240.240.0.7"
    order = [(r["kind"], r["site"], r.get("health")) for r in steps["routes"]["routes"]]
    assert order == [("direct", "lan", None), ("gateway", "near", "ALIVE"), ("gateway", "far", "DOWN")]
    assert steps["routes"]["routes"][1]["why"] == "network n2, same zone"
    assert steps["routes"]["routes"][2]["why"] == "network n3, another region"
    assert steps["routes"]["leftOut"] == ["dark: on network n4 without a gateway"]
    assert steps["access-policy"]["ok"]


def test_a_port_the_service_lacks_stops_the_explanation_there() -> None:
    q = parse_name("shop/web", "clusterset.local", "west", "grpc")
    out = explain(_view(), "west", q, {}, AccessState(), "mesh.example", {})
    assert [(s["step"], s["ok"]) for s in out["steps"]] == [("dns", False), ("port", False)]
