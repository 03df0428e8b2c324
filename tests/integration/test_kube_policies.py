"""TrafficPolicy and AccessPolicy objects on a Kubernetes site, synced into a real etcd, with the real kubectl.

The development API server serves the CRDs of deploy/kubernetes/; the operator applies policy objects with
kubectl; the site's policy sync writes them, signed by the operator key mounted for it, under
/meshfed/v1/mesh/policies/..., where `meshfed policy get` and a verifying reader find them; kubectl shows
Accepted True, or False with the reason for a bad object, one without a signer, or one the CLI already
wrote. Deleting an object removes its policy (for an access policy, by a signed tombstone).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from federation.agent.policysigning import operator_sign
from federation.core.errors import ConfigError
from federation.core.keys import Keys
from federation.core.policy import access
from federation.core.policy.kinds import ACCESS
from federation.core.verification import Mode
from federation.devkit.apiserver import DevApiServer
from federation.devkit.objects import namespace
from federation.pki.records import RecordVerifier
from federation.pki.signing import OPERATOR_CERT, OPERATOR_KEY, save_signer
from federation.pki.verifying import TrustBundle
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.policies import PolicyReader
from federation.registry.policysync import OWNER, PolicyOwner
from federation.sources.kubernetes.client import KubeClient
from federation.sources.kubernetes.policysync import PolicySync
from federation.sources.kubernetes.settings import KubernetesSettings
from federation.sources.kubernetes.watching import WatchMetrics
from tests.integration.test_kubectl import kubectl
from tests.pkihelp import Mesh, Signers
from tests.util import eventually

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
KEYS = Keys()

POLICIES = """
apiVersion: meshfed.io/v1alpha1
kind: TrafficPolicy
metadata: {name: web, namespace: shop}
spec:
  timeouts: {connect: 4s}
  retries: {attempts: 2}
---
apiVersion: meshfed.io/v1alpha1
kind: AccessPolicy
metadata: {name: web, namespace: shop}
spec:
  rules:
    - {name: no-edge, action: Deny, from: {sites: [edge]}}
---
apiVersion: meshfed.io/v1alpha1
kind: TrafficPolicy
metadata: {name: bad, namespace: shop}
spec:
  split:
    - {site: east, weight: 70}
    - {site: west, weight: 20}
"""


@dataclass
class Site:
    config: Path
    verifier: RecordVerifier
    sync: PolicySync
    writer: PolicyOwner


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


@pytest.fixture
def operator_dir(mesh: Mesh, tmp_path: Path) -> Path:
    directory = tmp_path / "operator"  # as the Secret is mounted, defaultMode 0400
    save_signer(directory, Signers(mesh).operator("alice"), OPERATOR_CERT, OPERATOR_KEY)
    return directory


@pytest.fixture
async def api() -> AsyncIterator[DevApiServer]:
    async with DevApiServer() as server:  # serves every CRD file of deploy/kubernetes/
        server.put(namespace("shop"))
        yield server


async def start(etcd: EtcdProcess, api: DevApiServer, mesh: Mesh, tmp_path: Path, operator: Path | None,
                tasks: list[asyncio.Task[None]]) -> Site:
    settings = KubernetesSettings(enabled=True, kubeconfig=str(api.kubeconfig(tmp_path / "kubeconfig")),
                                  backoff_base=0.05, backoff_cap=0.3, reconcile_delay=0.01, request_timeout=3)
    verifier = RecordVerifier(KEYS, TrustBundle.from_pem(mesh.bundle_pem()), Mode.REQUIRE)
    sign, name = operator_sign(operator, verifier) if operator is not None else (None, "")
    writer = PolicyOwner(EtcdClient([etcd.endpoint], timeout=3), KEYS, "east", sign=sign, read=verifier.mesh_policy,
                         require=True, signer_name=name)
    client = await KubeClient.connect(settings)
    sync = PolicySync(client, writer, settings, metrics=WatchMetrics(CollectorRegistry()))

    async def run() -> None:
        try:
            await sync.run()
        finally:
            await asyncio.shield(client.close())

    tasks.append(asyncio.create_task(run(), name="policy-sync"))
    return Site(tmp_path / "kubeconfig", verifier, sync, writer)


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def accepted(api: DevApiServer, plural: str, name: str) -> tuple[str, str, str] | None:
    obj = api.get(plural, "shop", name) or {}
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Accepted":
            return c["status"], c["reason"], c["message"]
    return None


async def meshfed(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "federation", *args], capture_output=True,
                                   text=True, timeout=60, check=False)


async def test_policy_objects_are_synced_signed_and_report_accepted(etcd: EtcdProcess, api: DevApiServer, mesh: Mesh,
                                                                    operator_dir: Path, tmp_path: Path) -> None:
    tasks: list[asyncio.Task[None]] = []
    try:
        site = await start(etcd, api, mesh, tmp_path, operator_dir, tasks)
        await kubectl(site.config, "apply", "-f", "-", stdin=POLICIES)
        await eventually(lambda: accepted(api, "trafficpolicies", "bad") is not None
                         and accepted(api, "accesspolicies", "web") is not None
                         and accepted(api, "trafficpolicies", "web") is not None, what="conditions on every object")
        assert accepted(api, "trafficpolicies", "web") == ("True", "Accepted",
                                                           "in the registry, signed by operator key alice")
        status, reason, message = accepted(api, "trafficpolicies", "bad")  # type: ignore[misc]
        assert (status, reason) == ("False", "Invalid")
        assert "spec.split" in message
        assert "100" in message
        # kubectl shows it: the Accepted column, and with -o wide the reason.
        table = (await kubectl(site.config, "get", "tp", "-n", "shop", "-o", "wide")).stdout.splitlines()
        rows = {line.split()[0]: line for line in table[1:]}
        assert rows["bad"].split()[1] == "False"
        assert "spec.split" in rows["bad"]
        assert rows["web"].split()[1] == "True"
        # `meshfed policy get` reads what the sync wrote; a reader that requires signatures takes both policies.
        ep = ("--endpoints", etcd.endpoint)
        got = await meshfed("policy", "get", "shop/web", "-o", "json", *ep)
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["spec"]["retries"]["attempts"] == 2
        assert (await meshfed("policy", "get", "shop/bad", *ep)).returncode != 0  # the bad one is not written
        got = await meshfed("policy", "get", "shop/web", "--kind", "access", "-o", "json", *ep)
        assert json.loads(got.stdout)["spec"]["rules"][0]["name"] == "no-edge"
        reader = PolicyReader(EtcdClient([etcd.endpoint]), KEYS, kind=ACCESS, verify=site.verifier.mesh_policy,
                              protect_deletes=True)
        await reader.refresh()
        assert ("shop", "web") in reader.policies.get()
        async with EtcdClient([etcd.endpoint]) as client:
            kv = await client.get(access.key_of(KEYS, "shop", "web"))
        assert kv is not None
        assert f'"{OWNER}":"kubernetes/east"'.encode() in kv.value

        # Deleting the objects removes their policies: the access policy by a signed tombstone.
        await kubectl(site.config, "delete", "tp", "web", "-n", "shop")
        await kubectl(site.config, "delete", "ap", "web", "-n", "shop")
        for _ in range(100):
            await reader.refresh()
            if ("shop", "web") not in reader.policies.get():
                break
            await asyncio.sleep(0.1)
        assert ("shop", "web") not in reader.policies.get()
        assert (await meshfed("policy", "get", "shop/web", *ep)).returncode != 0
    finally:
        await stop(tasks)


async def test_without_an_operator_key_nothing_is_written_and_a_cli_policy_is_not_overwritten(
        etcd: EtcdProcess, api: DevApiServer, mesh: Mesh, operator_dir: Path, tmp_path: Path) -> None:
    ep = ("--endpoints", etcd.endpoint)
    tasks: list[asyncio.Task[None]] = []
    try:
        site = await start(etcd, api, mesh, tmp_path, None, tasks)
        await kubectl(site.config, "apply", "-f", "-", stdin=POLICIES)
        await eventually(lambda: accepted(api, "trafficpolicies", "web") is not None
                         and accepted(api, "trafficpolicies", "bad") is not None, what="the conditions")
        status, reason, message = accepted(api, "trafficpolicies", "web")  # type: ignore[misc]
        assert (status, reason) == ("False", "NotSigned")
        assert "kubernetes.operator_key_dir" in message
        assert accepted(api, "trafficpolicies", "bad")[:2] == ("False", "Invalid")  # type: ignore[index]
        assert (await meshfed("policy", "get", "shop/web", *ep)).returncode != 0
        await stop(tasks)
        tasks.clear()

        # The operator applied shop/web with the CLI: the object does not take it over.
        (tmp_path / "cli.yaml").write_text(yaml.safe_dump(yaml.safe_load(POLICIES.split("---")[0]) | {
            "spec": {"timeouts": {"connect": "9s"}}}))
        out = await meshfed("policy", "apply", "-f", str(tmp_path / "cli.yaml"), "--operator", str(operator_dir), *ep)
        assert out.returncode == 0, out.stderr
        site = await start(etcd, api, mesh, tmp_path, operator_dir, tasks)
        await eventually(lambda: (accepted(api, "trafficpolicies", "web") or ("",))[0:2] == ("False", "Conflict"),
                         what="the conflict reported")
        assert "written with meshfed policy apply" in accepted(api, "trafficpolicies", "web")[2]  # type: ignore[index]
        await eventually(lambda: (accepted(api, "accesspolicies", "web") or ("",))[0] == "True",
                         what="the access policy synced now that there is a key")
        got = await meshfed("policy", "get", "shop/web", "-o", "json", *ep)
        assert json.loads(got.stdout)["spec"]["timeouts"]["connect"] == "9s"
    finally:
        await stop(tasks)


MESH_POLICIES = """
apiVersion: meshfed.io/v1alpha1
kind: MeshAccessPolicy
metadata: {name: default}
spec: {defaultAction: Deny, closeOnDeny: false}
---
apiVersion: meshfed.io/v1alpha1
kind: MeshAccessPolicy
metadata: {name: second}
spec: {defaultAction: Allow}
"""


def mesh_accepted(api: DevApiServer, name: str) -> tuple[str, str, str] | None:
    for c in ((api.get("meshaccesspolicies", "", name) or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Accepted":
            return c["status"], c["reason"], c["message"]
    return None


async def test_the_mesh_access_policy_object_is_synced_signed_and_reset_when_deleted(
        etcd: EtcdProcess, api: DevApiServer, mesh: Mesh, operator_dir: Path, tmp_path: Path) -> None:
    from federation.registry.access import AccessReader

    tasks: list[asyncio.Task[None]] = []
    try:
        site = await start(etcd, api, mesh, tmp_path, operator_dir, tasks)
        await kubectl(site.config, "apply", "-f", "-", stdin=MESH_POLICIES)
        await eventually(lambda: mesh_accepted(api, "default") is not None and mesh_accepted(api, "second")
                         is not None, what="conditions on both objects")
        assert mesh_accepted(api, "default") == ("True", "Accepted", "in the registry, signed by operator key alice")
        status, reason, message = mesh_accepted(api, "second")  # type: ignore[misc]
        assert (status, reason) == ("False", "Invalid")
        assert "the one MeshAccessPolicy of a mesh is named default" in message
        reader = AccessReader(EtcdClient([etcd.endpoint]), KEYS, verify=site.verifier.mesh_policy,
                              protect_deletes=True)
        await reader.refresh()
        assert reader.policies.get().mesh == access.MeshAccess(access.Action.DENY, close_on_deny=False)
        async with EtcdClient([etcd.endpoint]) as client:
            kv = await client.get(access.mesh_key(KEYS))
        assert kv is not None
        assert f'"{OWNER}":"kubernetes/east"'.encode() in kv.value

        # Deleted: the mesh default goes back to Allow in every reader (a signed record; a bare delete would not).
        await kubectl(site.config, "delete", "meshaccesspolicy", "default")
        for _ in range(100):
            await reader.refresh()
            if reader.policies.get().mesh == access.MeshAccess():
                break
            await asyncio.sleep(0.1)
        assert reader.policies.get().mesh == access.MeshAccess()
        async with EtcdClient([etcd.endpoint]) as client:
            kv = await client.get(access.mesh_key(KEYS))
        assert kv is not None
        assert OWNER.encode() not in kv.value  # owned by no one: the CLI or another site may set it now
        assert b'"sig":{' in kv.value
    finally:
        await stop(tasks)


async def test_without_the_mesh_access_policy_crd_the_other_kinds_still_sync(
        etcd: EtcdProcess, mesh: Mesh, operator_dir: Path, tmp_path: Path) -> None:
    """A cluster (or a ClusterRole) from before the MeshAccessPolicy sync: its list fails, the rest goes on."""
    from federation.devkit.apiserver.server import REPO_CRD_FILES, load_crds

    crds = [c for path in REPO_CRD_FILES for c in load_crds(path)
            if c["metadata"]["name"] != "meshaccesspolicies.meshfed.io"]
    tasks: list[asyncio.Task[None]] = []
    async with DevApiServer(crds=crds) as api:
        api.put(namespace("shop"))
        try:
            site = await start(etcd, api, mesh, tmp_path, operator_dir, tasks)
            await kubectl(site.config, "apply", "-f", "-", stdin=POLICIES.split("---")[0])
            await eventually(lambda: (accepted(api, "trafficpolicies", "web") or ("",))[0] == "True",
                             what="the TrafficPolicy synced without the MeshAccessPolicy CRD")
        finally:
            await stop(tasks)


def test_an_operator_key_readable_by_others_is_refused(mesh: Mesh, operator_dir: Path) -> None:
    os.chmod(operator_dir / OPERATOR_KEY, 0o644)  # the mistake under test
    with pytest.raises(ConfigError, match="readable by group or others"):
        operator_sign(operator_dir, None)
    # As the kubelet mounts a 0400 Secret under fsGroup: 0440, the agent's own group. Accepted; another group not.
    os.chmod(operator_dir / OPERATOR_KEY, 0o440)
    os.chown(operator_dir / OPERATOR_KEY, -1, os.getegid())
    operator_sign(operator_dir, None)
    if os.geteuid() == 0:  # only root may give a file to another group
        os.chown(operator_dir / OPERATOR_KEY, -1, os.getegid() + 1)
        with pytest.raises(ConfigError, match=r"readable by group or others \(mode 0440\)"):
            operator_sign(operator_dir, None)
    os.chmod(operator_dir / OPERATOR_KEY, 0o400)
    foreign = RecordVerifier(KEYS, TrustBundle.from_pem(Mesh().bundle_pem()), Mode.REQUIRE)
    with pytest.raises(ConfigError, match="not an operator key of this mesh"):
        operator_sign(operator_dir, foreign)
