"""The topology document: sites by network with this site's link to each, and a page of services."""

from __future__ import annotations

import dataclasses

from federation.agent.selection import EVERYTHING, Selection
from federation.agent.topology import topology
from federation.core.records import Gateway, Locality
from tests.pkihelp import Mesh, export, view


def mesh_view():  # type: ignore[no-untyped-def]
    m = Mesh()
    gw = (Gateway("gw", "198.18.0.1", 15443),)
    sites = [
        m.site("west", network="n1", locality=Locality("eu", "eu-1"), gateways=gw),
        m.site("edge", network="n1", locality=Locality("eu", "eu-2")),
        m.site("east", network="n2", locality=Locality("us", "us-1"), gateways=gw),
        m.site("south", network="n3", locality=Locality("us", "us-1"), gateways=gw),
        m.site("lonely", network="n4"),
    ]
    ready = export("east", "shop", "web", 80)
    down = dataclasses.replace(export("edge", "shop", "web", 80), endpoints=tuple(
        dataclasses.replace(e, ready=False) for e in export("edge", "shop", "web", 80).endpoints))
    return view(sites, [ready, down, export("south", "shop", "db", 5432)])


def test_every_site_with_its_link_from_here_and_the_backing_sites_of_each_service() -> None:
    doc = topology(mesh_view(), "west", frozenset({"south"}), {"east": {"lagSeconds": 0.02, "overdue": False}},
                   EVERYTHING)
    links = {s["name"]: (s["link"]["via"], s["link"]["health"]) for s in doc["sites"]}
    assert links == {"west": ("self", "ok"), "edge": ("direct", "ok"), "east": ("gateway", "ok"),
                     "south": ("gateway", "unreachable"), "lonely": ("none", "no-gateway")}
    assert doc["networks"]["n1"] == {"sites": 2, "localities": {"eu/eu-1": 1, "eu/eu-2": 1}}
    east = next(s for s in doc["sites"] if s["name"] == "east")
    assert (east["lagSeconds"], east["gateways"], east["exports"]) == (0.02, ["198.18.0.1:15443"], 1)
    web = next(s for s in doc["services"] if s["service"] == "shop/web")
    assert {(b["site"], b["ready"], b["endpoints"]) for b in web["sites"]} == {("east", 1, 1), ("edge", 0, 1)}


def test_a_chosen_service_and_a_page_of_them() -> None:
    doc = topology(mesh_view(), "west", frozenset(), {}, Selection(service="web"))
    assert [s["service"] for s in doc["services"]] == ["shop/web"]
    assert len(doc["sites"]) == 5  # the sites are always all there: the page shows where the service is
    doc = topology(mesh_view(), "west", frozenset(), {}, Selection(limit=1))
    assert [s["service"] for s in doc["services"]] == ["shop/db"]
    assert doc["page"]["next"] == "shop/db"


def test_a_probe_that_finds_a_gateway_dead_says_so() -> None:
    doc = topology(mesh_view(), "west", frozenset(), {}, EVERYTHING,
                   probes={"east": {"alive": False, "latencyMs": None}, "south": {"alive": True, "latencyMs": 4.2}})
    links = {s["name"]: s["link"] for s in doc["sites"]}
    assert links["east"]["health"] == "unreachable"
    assert links["south"] == {"via": "gateway", "health": "ok", "alive": True, "latencyMs": 4.2}
