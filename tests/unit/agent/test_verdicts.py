"""The pure checks behind `meshfed verify`: VIP ranges over real addresses, shared networks, skew, open files."""

from __future__ import annotations

from federation.agent.verdicts import exit_code, files_line, overlaps, skew_line
from federation.core.records import Endpoint, Gateway, ServiceExport, ServicePort, Site
from federation.core.view import MeshView


def _view(west_address: str, east_network: str = "n2") -> MeshView:
    port = (ServicePort("http", 80),)
    return MeshView(
        sites={"west": Site("west", "n1", gateways=(Gateway("gateway", "198.18.0.1", 15443),)),
               "east": Site("east", east_network, gateways=(Gateway("gateway", "198.18.0.2", 15443),))},
        exports={("west", "shop", "web"): ServiceExport("west", "shop", "web", port,
                                                        endpoints=(Endpoint((west_address,)),)),
                 ("east", "shop", "web"): ServiceExport("east", "shop", "web", port,
                                                        endpoints=(Endpoint(("10.0.0.5",)),))})


def test_a_vip_range_holding_a_real_address_fails_and_names_it() -> None:
    lines = overlaps(_view("10.0.0.5"), "west", ("240.240.0.0/16",))
    assert [(ln["check"], ln["result"]) for ln in lines] == [("vip-ranges", "PASS"), ("networks", "PASS")]
    (vip, _) = overlaps(_view("240.240.1.9"), "west", ("240.240.0.0/16",))
    assert vip["result"] == "FAIL"
    assert "240.240.1.9 (an endpoint of shop/web at west)" in vip["detail"]
    assert vip["next"].startswith("choose dns.vip_ranges")


def test_two_sites_of_one_network_claiming_one_address_warn() -> None:
    lines = overlaps(_view("10.0.0.5", east_network="n1"), "west", ())
    assert [(ln["check"], ln["result"]) for ln in lines] == [("networks", "WARN")]
    assert "10.0.0.5 by east, west" in lines[0]["detail"]


def test_clock_skew_passes_warns_and_fails_by_size() -> None:
    assert skew_line("east", 0.3, 0.001)["result"] == "PASS"
    assert skew_line("east", -5.0, 0.001)["result"] == "WARN"
    fail = skew_line("east", 120.0, 0.001)
    assert fail["result"] == "FAIL"
    assert "120.000s ahead of ours" in fail["detail"]
    assert skew_line("east", None, None)["result"] == "WARN"  # an older agent tells no time


def test_open_files_near_the_limit() -> None:
    assert files_line(100, 65536)["result"] == "PASS"
    assert files_line(900, 1024)["result"] == "WARN"
    assert files_line(1020, 1024)["result"] == "FAIL"
    assert exit_code([files_line(1020, 1024)]) == 1
    assert exit_code([files_line(900, 1024), files_line(1, 65536)]) == 0
