"""`meshfed site revoke` / `restore` end to end: two agents, traffic between them, a revoked site cut off at once.

Revoking west: east's gateway refuses west's certificate and closes its open tunnels within a second,
every reader (east's, and a `meshfed registry ls`) drops west's records with the reason, a raw etcd delete of
the revocation list changes nothing, and `meshfed site restore` lets west back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from federation.core.keys import Keys
from federation.core.meshdocs import revocations_key
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import Delete, EtcdClient
from tests.integration.agentproc import AgentProcess
from tests.integration.twoagents import meshfed, two_agents, until
from tests.tunnelhelp import EchoServer


async def roundtrip(address: tuple[str, int]) -> bool:
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"ping")
            writer.write_eof()
            ok = await reader.read() == b"ping"
            writer.close()
            return ok
    except (OSError, TimeoutError):
        return False


async def test_a_revoked_site_is_cut_off_at_once_and_restored(etcd: EtcdProcess, tmp_path: Path) -> None:
    ep = ("--endpoints", etcd.endpoint)
    ca = tmp_path / "ca"
    await meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca))
    await meshfed("ca", "operator", "ops", "--ca", str(ca), "--out", str(tmp_path / "ops"))
    echo = EchoServer()
    port = await echo.start()
    agents: dict[str, AgentProcess] = {}
    try:
        address = await two_agents(agents, tmp_path, etcd.endpoint, ca, port)
        await until(lambda: roundtrip(address), "west reaching east's service")
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"open")
        assert await reader.readexactly(4) == b"open"

        out = await meshfed("site", "revoke", "west", "--reason", "key leaked", "--operator", str(tmp_path / "ops"),
                            *ep)
        revoked_at = time.monotonic()
        assert "site west revoked" in out.stdout
        async with asyncio.timeout(5):
            rest = await reader.read()  # east closed west's tunnel: the relayed connection ends
        assert rest == b""
        assert time.monotonic() - revoked_at < 1.5  # the command returns once etcd holds the list
        writer.close()
        assert not await roundtrip(address)

        async def east_drops_west() -> bool:
            reg = json.loads((await asyncio.to_thread(agents["east"].get, "/registry"))[1])
            return ("west" not in {s["name"] for s in reg["sites"]}
                    and [(r["site"], r["reason"]) for r in reg["revoked"]] == [("west", "key leaked")])

        await until(east_drops_west, "east's view without west, its record refused with the reason")
        ls = await meshfed("site", "ls", *ep)
        assert "west  revoked" in ls.stdout
        assert "key leaked" in ls.stdout
        reg = await meshfed("registry", "ls", *ep)
        assert "REVOKED SITES" in reg.stdout
        signed = {s["name"]: s["signedRecords"] for s in json.loads((await meshfed("registry", "ls", "--json",
                                                                                    *ep)).stdout)["sites"]}
        assert signed["east"][0] == signed["east"][1] > 1  # every record of a signing agent: site record, export
        assert "/meshfed/v1/sites/west: site west is revoked by the operator (key leaked)" in reg.stdout

        async with EtcdClient([etcd.endpoint]) as client:  # a raw writer deletes the revocation list
            await client.commit([Delete(revocations_key(Keys()))])
        await asyncio.sleep(1.0)
        assert not await roundtrip(address)  # nothing changed: a delete cannot lift a revocation

        await meshfed("site", "restore", "west", "--operator", str(tmp_path / "ops"), *ep)
        await until(lambda: roundtrip(address), "west reaching east again after the restore")
        log = (tmp_path / "east.log").read_text()
        assert log.count("site west is revoked by the operator: closing its") == 1
    finally:
        for agent in agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        await echo.close()


async def test_a_revoked_operator_key_signs_nothing_agents_take(etcd: EtcdProcess, tmp_path: Path) -> None:
    """`meshfed site revoke-operator`: policies the revoked key signs afterwards are refused by verifying readers."""
    from federation.core.policy.kinds import ACCESS
    from federation.core.verification import Mode
    from federation.pki.records import RecordVerifier
    from federation.pki.verifying import TrustBundle
    from federation.registry.policies import PolicyReader

    ep = ("--endpoints", etcd.endpoint)
    ca = tmp_path / "ca"
    await meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca))
    for name in ("alice", "mallory"):
        await meshfed("ca", "operator", name, "--ca", str(ca), "--out", str(tmp_path / name))
    out = await meshfed("site", "revoke-operator", str(tmp_path / "mallory" / "operator.crt"), "--reason", "stolen",
                        "--operator", str(tmp_path / "mallory"), *ep, ok=False)
    assert "cannot revoke itself" in out.stderr
    doc = "apiVersion: meshfed.io/v1alpha1\nkind: AccessPolicy\nmetadata: {{namespace: shop, name: {}}}\nspec: {{rules: []}}\n"
    (tmp_path / "old.yaml").write_text(doc.format("old"))
    (tmp_path / "new.yaml").write_text(doc.format("web"))
    # Signed before the key was stolen: alice vouches for it (--resign) as she revokes the key.
    await meshfed("policy", "apply", "-f", str(tmp_path / "old.yaml"), "--operator", str(tmp_path / "mallory"), *ep)
    out = await meshfed("site", "revoke-operator", str(tmp_path / "mallory" / "operator.crt"), "--reason", "stolen",
                        "--resign", "--operator", str(tmp_path / "alice"), *ep)
    assert "revoked: agents take nothing it signs from now on (revocation list 1)" in out.stdout
    assert "/mesh/policies/access/shop/old: signed again by" in out.stdout
    assert "operator key" in (await meshfed("site", "ls", *ep)).stdout
    await meshfed("policy", "apply", "-f", str(tmp_path / "new.yaml"), "--operator", str(tmp_path / "mallory"), *ep)
    verifier = RecordVerifier(Keys(), TrustBundle.from_pem((ca / "ca.crt").read_bytes()), Mode.REQUIRE)
    async with EtcdClient([etcd.endpoint]) as client:
        kv = await client.get(revocations_key(Keys()))
        assert kv is not None
        verifier.document(revocations_key(Keys()), kv.value)
        reader = PolicyReader(client, Keys(), kind=ACCESS, verify=verifier.mesh_policy, protect_deletes=True)
        outcome = await reader.refresh()
    assert ("shop", "web") not in reader.policies.get()
    assert ("shop", "old") in reader.policies.get()
    assert any("which is revoked (stolen)" in r.reason for r in outcome.rejected)
