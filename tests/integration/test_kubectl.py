"""The real kubectl (/usr/bin/kubectl) against the development API server: discovery, get, apply, delete, watch.

Everything goes over TLS with certificates from meshfed's own CA code, authenticated by the bearer
token or by a client certificate, exactly as kubectl would talk to a real cluster.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from federation.devkit.apiserver import DevApiServer
from federation.devkit.apiserver.server import REPO_CRDS
from federation.devkit.objects import endpoint, endpointslice, namespace, service
from tests.util import eventually

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


async def kubectl(config: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run kubectl in a thread (the server runs on this loop) with its own cache directory."""
    argv = ["kubectl", "--kubeconfig", str(config), "--cache-dir", str(config.parent / "cache"), *args]
    res = await asyncio.to_thread(subprocess.run, argv, input=stdin, capture_output=True, text=True, timeout=60,
                                  check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


WEB = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: web, namespace: shop}
spec:
  exportedLabels: {tier: front}
"""


async def test_apply_get_and_delete_with_a_token(tmp_path: Path) -> None:
    async with DevApiServer(crds=[]) as api:
        cfg = api.kubeconfig(tmp_path / "kubeconfig")
        assert (tmp_path / "kubeconfig").stat().st_mode & 0o777 == 0o600
        version = json.loads((await kubectl(cfg, "version", "-o", "json")).stdout)
        assert version["serverVersion"]["gitVersion"].startswith("v1.32")
        # The CRDs are applied as an operator would, and served from then on.
        out = (await kubectl(cfg, "apply", "-f", str(REPO_CRDS))).stdout
        assert "serviceexports.multicluster.x-k8s.io created" in out
        await kubectl(cfg, "wait", "--for=condition=Established", "crd/serviceimports.multicluster.x-k8s.io")
        kinds = (await kubectl(cfg, "api-resources", "--api-group=multicluster.x-k8s.io", "-o", "name")).stdout
        assert kinds.split() == ["serviceexports.multicluster.x-k8s.io", "serviceimports.multicluster.x-k8s.io"]
        await kubectl(cfg, "create", "namespace", "shop")
        out = (await kubectl(cfg, "apply", "-f", "-", stdin=WEB)).stdout
        assert "service/web created" in out
        assert "serviceexport.multicluster.x-k8s.io/web created" in out
        svc = yaml.safe_load((await kubectl(cfg, "get", "svc", "web", "-n", "shop", "-o", "yaml")).stdout)
        assert svc["spec"]["clusterIP"].startswith("10.96.")
        assert "kubectl.kubernetes.io/last-applied-configuration" in svc["metadata"]["annotations"]
        # A second apply with a changed port is a strategic merge patch of the port list.
        changed = WEB.replace("port: 80,", "port: 8080,")
        assert "service/web configured" in (await kubectl(cfg, "apply", "-f", "-", stdin=changed)).stdout
        assert [p["port"] for p in api.get("services", "shop", "web")["spec"]["ports"]] == [8080]  # type: ignore[index]
        assert "unchanged" in (await kubectl(cfg, "apply", "-f", "-", stdin=changed)).stdout
        table = (await kubectl(cfg, "get", "serviceexports", "-n", "shop")).stdout.splitlines()
        assert table[0].split() == ["NAME", "VALID", "READY", "CONFLICT", "AGE"]
        both = json.loads((await kubectl(cfg, "get", "svc,svcex", "-A", "-o", "json")).stdout)
        assert sorted(i["kind"] for i in both["items"]) == ["Service", "ServiceExport"]
        labelled = (await kubectl(cfg, "get", "svc", "-A", "-l", "app=web", "-o", "name")).stdout
        assert labelled.split() == ["service/web"]
        se = api.get("serviceexports", "shop", "web")
        assert se is not None
        assert se["spec"] == {"exportedLabels": {"tier": "front"}}
        # Fields the CRD does not declare are pruned, and kubectl says so.
        bad = WEB.split("---")[1].replace("exportedLabels", "exportedLabelz")
        res = await kubectl(cfg, "apply", "--validate=warn", "-f", "-", stdin=bad)
        assert 'unknown field "spec.exportedLabelz"' in res.stderr
        res = await kubectl(cfg, "apply", "-f", "-", stdin=bad, check=False)
        assert res.returncode != 0
        assert "exportedLabelz" in res.stderr
        await kubectl(cfg, "delete", "-f", "-", stdin=WEB)
        assert api.get("services", "shop", "web") is None
        assert api.get("serviceexports", "shop", "web") is None
        wrong = tmp_path / "wrong"
        wrong.write_text((tmp_path / "kubeconfig").read_text().replace(api.token, "not-the-token"))
        res = await kubectl(wrong, "get", "svc", "-A", check=False)
        assert res.returncode != 0
        assert "Unauthorized" in res.stderr + res.stdout


async def test_client_certificate_and_watch(tmp_path: Path) -> None:
    async with DevApiServer() as api:
        api.put(service())
        cfg = api.kubeconfig(tmp_path / "kubeconfig", client_cert=True)
        assert "token" not in (tmp_path / "kubeconfig").read_text()
        watch = asyncio.create_task(kubectl(cfg, "get", "endpointslices", "-n", "shop", "--watch",
                                            "--output-watch-events", "--request-timeout=10s", check=False))
        try:
            await eventually(lambda: bool(api.watchers), 20, "kubectl's watch")
            api.put(endpointslice(endpoints=[endpoint("10.244.1.5")]))
            api.put(endpointslice(endpoints=[endpoint("10.244.1.5", ready=False)]))
            api.remove("endpointslices", "shop", "web-abcde")
            await asyncio.sleep(1)
            api.drop_watches()
            out = (await watch).stdout
        finally:
            watch.cancel()
        events = [line.split()[:2] for line in out.splitlines()[1:]]
        assert events == [["ADDED", "web-abcde"], ["MODIFIED", "web-abcde"], ["DELETED", "web-abcde"]], out
        assert "admin" in api.handler.users  # the client certificate's common name
        rows = (await kubectl(cfg, "get", "svc", "-n", "shop", "web", "--no-headers")).stdout.split()
        assert rows[:2] == ["web", "ClusterIP"]
        assert rows[4] == "80/TCP"


async def test_kubectl_reads_serviceimports_as_yaml(tmp_path: Path) -> None:
    imp = {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
           "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"type": "ClusterSetIP", "ips": ["10.96.0.20"], "ipFamilies": ["IPv4"],
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
           "status": {"clusters": [{"cluster": "east"}]}}
    async with DevApiServer() as api:
        api.put(namespace("shop"))
        api.put(imp)
        cfg = api.kubeconfig(tmp_path / "kubeconfig")
        got = yaml.safe_load((await kubectl(cfg, "get", "serviceimports", "-n", "shop", "-o", "yaml")).stdout)
        [item] = got["items"]
        assert item["apiVersion"] == "multicluster.x-k8s.io/v1beta1"  # the preferred version, converted
        assert item["spec"] == imp["spec"]
        assert item["status"] == imp["status"]
        alpha = yaml.safe_load((await kubectl(cfg, "get", "serviceimports.v1alpha1.multicluster.x-k8s.io", "-n", "shop",
                                              "web", "-o", "yaml")).stdout)
        assert alpha["apiVersion"] == "multicluster.x-k8s.io/v1alpha1"
        cols = (await kubectl(cfg, "get", "svcim", "-n", "shop")).stdout.splitlines()
        assert cols[0].split() == ["NAME", "TYPE", "IP", "AGE"]
        assert cols[1].split()[:3] == ["web", "ClusterSetIP", '["10.96.0.20"]']
        explained = (await kubectl(cfg, "explain", "serviceimport.spec.ipFamilies")).stdout
        assert "The IP families of ips" in explained
