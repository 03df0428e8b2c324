"""`meshfed verify`, `gateways` and `explain` in the end-to-end topology: the demo in network namespaces.

Three sites on three networks (east a Kubernetes-style site, west and edge VM sites with VIPs on meshfed0 and
capture rules), each command run inside west's namespace as an operator there would. Then a fault only this
topology has: west's capture rules, then one of its VIP addresses, removed behind the agent's back, which
verify names.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator

import pytest

from federation.devkit.stage import Demo

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    d = Demo(tmp_path_factory.mktemp("verify") / "demo", netns=True, out=io.StringIO(),
             prefix=f"mfv{os.getpid() % 1000}", wan=None)  # a wan of its own: a demo may run beside it
    try:
        d.up()
        ok, body, _ = d.wait_curl("west", d.url("west", "web"))
        assert ok, body
        yield d
    finally:
        d.down()


def meshfed(d: Demo, site: str, *args: str) -> tuple[int, str]:
    res = d.lab.run(site, [d.python, "-m", "federation", *args, "--config", str(d.state / f"{site}.yaml")],
                    timeout=150)
    return res.returncode, res.stdout + res.stderr


@pytest.mark.timeout(300)
def test_verify_gateways_and_explain_on_a_healthy_demo_then_capture_rules_removed(demo: Demo) -> None:
    def alive() -> bool:
        _, out = meshfed(demo, "west", "gateways", "--json")
        states = {g["site"]: g["state"] for g in json.loads(out)["gateways"]}
        return states.get("east") == "ALIVE"

    demo.wait_for(alive, 30, "west's prober finding east ALIVE")
    code, out = meshfed(demo, "west", "gateways")
    assert code == 0, out
    print(out)
    assert any(ln.startswith("east ") and " ALIVE " in ln for ln in out.splitlines()), out
    code, out = meshfed(demo, "west", "verify", "--json")
    lines = json.loads(out)["lines"]
    failed = [ln for ln in lines if ln["result"] == "FAIL"]
    assert code == 0, failed
    checks = {ln["check"] for ln in lines}
    assert {"gateway", "mtls", "clock", "stream", "dns", "vips", "capture", "etcd"} <= checks, checks
    assert all(ln["result"] == "PASS" for ln in lines if ln["check"] in ("vips", "capture", "stream"))
    code, text = meshfed(demo, "west", "verify")
    print(text)  # the sample in docs/operations.md
    code, out = meshfed(demo, "west", "explain", "web.shop.svc.clusterset.local", "--live")
    print(out)
    assert code == 0, out

    table = json.loads(meshfed(demo, "west", "status", "--json")[1])["egress"]["table"]
    removed = demo.lab.run("west", ["nft", "delete", "table", *table.split()])
    assert removed.returncode == 0, removed.stderr
    code, out = meshfed(demo, "west", "verify", "--json")
    assert code == 1
    (capture,) = [ln for ln in json.loads(out)["lines"] if ln["check"] == "capture"]
    assert capture["result"] == "FAIL"
    assert capture["detail"] == f"nft list table {table}: Error: No such file or directory"

    vif = json.loads(meshfed(demo, "west", "status", "--json")[1])["vipInterface"]
    gone = vif["addresses"][0]
    flushed = demo.lab.run("west", ["ip", "addr", "del", gone, "dev", vif["name"]])
    assert flushed.returncode == 0, flushed.stderr
    code, out = meshfed(demo, "west", "verify", "--json")
    assert code == 1
    (vips,) = [ln for ln in json.loads(out)["lines"] if ln["check"] == "vips"]
    assert vips["result"] == "FAIL"
    assert vips["detail"] == f"missing on the interface: {gone}"
