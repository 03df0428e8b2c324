"""The upstream MCS conformance suite's test driver (kubernetes-sigs/mcs-api conformance/), on meshfed sites.

Two Kubernetes-type sites, each its own development API server process (with the kube-proxy
stand-in, ClusterIPs in 127.0.0.0/8) and its own `meshfed agent` process, one real etcd, a mesh CA
from our own PKI code. "same-network": both sites on one network, pods reached directly.
"cross-network": two networks, traffic through the egress and the mTLS gateways.

Where upstream runs pods, this runs what stands for them: the hello "pods" are TCP servers on
loopback addresses answering `pod ip <ip>` (as the suite's socat backends do), their EndpointSlices
written through the API as the EndpointSlice controller writes them; the request pod is this test
process asking the site's DNS (dnspython, for nslookup) and connecting (sockets, for nc).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import dns.rrset
import yaml

from federation.pki.issuing import save_site
from tests.integration.agentproc import AgentProcess, write_config
from tests.pkihelp import Mesh as Pki

MCS = "multicluster.x-k8s.io/v1beta1"
HELLO = "hello"
ZONE = "clusterset.local"
_SEQ = itertools.count(1)


class Api:
    """A small synchronous client of one development API server, from its kubeconfig (TLS + token)."""

    def __init__(self, kubeconfig: Path) -> None:
        cfg = yaml.safe_load(kubeconfig.read_text())
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        self.server = cluster["server"]
        self.ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        self.token = user["token"]

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ctx) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def get(self, path: str) -> dict[str, Any] | None:
        code, obj = self.call("GET", path)
        if code == 404:
            return None
        assert code == 200, obj
        return obj

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        code, out = self.call("POST", path, obj)
        assert code == 201, out
        return out

    def delete(self, path: str) -> None:
        code, out = self.call("DELETE", path)
        assert code in (200, 404), out


def core(ns: str, plural: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/{plural}" + (f"/{name}" if name else "")


def mcs(ns: str, plural: str, name: str = "") -> str:
    return f"/apis/{MCS}/namespaces/{ns}/{plural}" + (f"/{name}" if name else "")


def slices(ns: str, name: str = "") -> str:
    return f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices" + (f"/{name}" if name else "")


class Pod:
    """A hello backend: a TCP server on `ip:port` answering every connection with `pod ip <ip>`."""

    def __init__(self, ip: str, port: int = 42) -> None:
        self.ip = ip
        self.sock = socket.create_server((ip, port), reuse_port=False)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"pod-{ip}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(f"pod ip {self.ip}\n".encode())

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


class ClusterDns:
    """The cluster's own DNS for `<svc>.<ns>.svc.cluster.local` (CoreDNS's part), the agent's upstream."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="cluster-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(wire)
            resp = dns.message.make_response(query)
            labels = [lbl.decode() for lbl in query.question[0].name.labels if lbl]
            if len(labels) == 5 and labels[2:] == ["svc", "cluster", "local"]:
                svc = self.api.get(core(labels[1], "services", labels[0]))
                ip = (svc or {}).get("spec", {}).get("clusterIP")
                if ip and ip != "None":
                    resp.answer.append(dns.rrset.from_text(query.question[0].name, 5, "IN", "A", ip))
            if not resp.answer:
                resp.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(resp.to_wire(), addr)

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


@dataclass
class Cluster:
    """One Kubernetes-type site: its API server process, agent process, DNS and pod address block."""

    name: str
    network: str
    index: int
    api: Api
    api_proc: subprocess.Popen[bytes]
    agent: AgentProcess
    cluster_dns: ClusterDns
    dns: tuple[str, int] = ("127.0.0.1", 53)

    def pod_ip(self, block: int, i: int) -> str:
        return f"127.{20 + self.index}.{block % 250}.{i + 1}"


@dataclass
class MeshOfTwo:
    """Two sites, `topology` "same-network" or "cross-network"."""

    topology: str
    clusters: list[Cluster] = field(default_factory=list)
    started: list[subprocess.Popen[bytes] | AgentProcess | ClusterDns] = field(default_factory=list)
    """Everything started so far, so that a setup failing halfway stops what it had started."""


def start_mesh(mesh: MeshOfTwo, etcd_endpoint: str, root: Path) -> MeshOfTwo:
    """Start both sites into `mesh` (which `stop_mesh` cleans up, also after a failure here)."""
    topology = mesh.topology
    pki = Pki()
    for i in range(2):
        name = f"c{i}"
        network = "net-shared" if topology == "same-network" else f"net-{i}"
        save_site(root / "ca" / name, pki.site_ca(name), force=True)
        kubeconfig = root / f"{name}.kubeconfig"
        with open(root / f"{name}-api.log", "ab") as log:  # the child keeps its own copy of the descriptor
            api_proc = subprocess.Popen(
                [sys.executable, "-m", "federation.devkit.apiserver", "serve", "--kubeconfig", str(kubeconfig),
                 "--name", name, "--service-cidr", f"127.{96 + i}.0.0/16", "--proxy"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        mesh.started.append(api_proc)
        deadline = time.monotonic() + 30
        while not kubeconfig.exists():
            assert api_proc.poll() is None, (root / f"{name}-api.log").read_text()
            assert time.monotonic() < deadline, "the development API server did not start"
            time.sleep(0.05)
        api = Api(kubeconfig)
        cluster_dns = ClusterDns(api)
        mesh.started.append(cluster_dns)
        cfg = write_config(
            root / f"{name}.yaml", name, [etcd_endpoint], root / name, [],
            dns={"udp": ["127.0.0.1:0"], "tcp": ["127.0.0.1:0"], "upstreams": [cluster_dns.address]},
            kubernetes={"enabled": True, "kubeconfig": str(kubeconfig), "egress_address": "127.0.0.1",
                        "endpoint_ranges": [f"127.{96 + i}.240.0/20"],  # handed out last here
                        "backoff_base": 0.05, "backoff_cap": 0.5, "reconcile_delay": 0.01},
            gateway={"ca_dir": str(root / "ca" / name), "listen_address": "127.0.0.1", "listen_port": 0,
                     "egress_address": "127.0.0.1"},
        )
        data = yaml.safe_load(cfg.read_text())
        data["site"] = {"name": name, "network": network, "region": "r1", "zone": "z1", "kind": "kubernetes",
                        "gateway_address": "127.0.0.1"}
        cfg.write_text(yaml.safe_dump(data))
        agent = AgentProcess(cfg, root / name).start()
        mesh.started.append(agent)
        mesh.clusters.append(Cluster(name, network, i, api, api_proc, agent, cluster_dns))
    for c in mesh.clusters:
        eventually(lambda c=c: _ready(c.agent), 90, 0.5, what=f"agent {c.name} ready")
        udp = json.loads(c.agent.get("/status")[1])["dns"]["udp"][0]
        host, _, port = udp.rpartition(":")
        c.dns = (host, int(port))
    return mesh


def _ready(agent: AgentProcess) -> bool:
    """/readyz answers 200; a slow answer on a loaded machine is a retry, not a failure."""
    try:
        return agent.get("/readyz")[0] == 200
    except (OSError, TimeoutError):
        return False


def stop_mesh(mesh: MeshOfTwo) -> None:
    """Stop every process and thread `start_mesh` started, agents first; an agent's bad exit fails the run."""
    codes = []
    for thing in sorted(mesh.started, key=lambda x: not isinstance(x, AgentProcess)):
        if isinstance(thing, AgentProcess):
            codes.append((thing, thing.stop()))
        elif isinstance(thing, ClusterDns):
            thing.stop()
        else:
            thing.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                thing.wait(10)
            if thing.poll() is None:
                os.kill(thing.pid, signal.SIGKILL)
                thing.wait()
    mesh.started.clear()
    for agent, code in codes:
        assert code == 0, agent.log.read_text()[-5000:]


# ---------------------------------------------------------------- waiting, as Gomega's Eventually/Consistently


def eventually(check: Callable[[], Any], within: float = 20.0, poll: float = 0.1, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy without raising; its last error fails the test."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            out = check()
            if out:
                return out
            last = None
        except AssertionError as exc:
            last = exc
        time.sleep(poll)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}" + (f": {last}" if last else ""))


def consistently(check: Callable[[], bool], within: float = 5.0, poll: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert check(), f"{what} stopped holding"
        time.sleep(poll)


# ---------------------------------------------------------------- the test driver


def hello_service(**spec: Any) -> dict[str, Any]:
    """newHelloService(): tcp/42 and udp/42, ClientIP affinity for 10 s, PreferDualStack."""
    base = {"selector": {"app": HELLO},
            "ports": [{"name": "tcp", "port": 42, "protocol": "TCP"}, {"name": "udp", "port": 42, "protocol": "UDP"}],
            "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}},
            "ipFamilyPolicy": "PreferDualStack"}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": HELLO, "annotations": {"dummy-svc": "dummy"}, "labels": {"dummy-svc": "dummy"}},
            "spec": {**base, **spec}}


def hello_export(**spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": MCS, "kind": "ServiceExport", "metadata": {
        "name": HELLO, "annotations": {"dummy-svcexport": "dummy"}, "labels": {"dummy-svcexport": "dummy"}}}
    if spec:
        out["spec"] = spec
    return out


class Driver:
    """newTestDriver(): a fresh namespace in every cluster, the hello service deployed on cluster[0]."""

    def __init__(self, mesh: MeshOfTwo) -> None:
        self.mesh = mesh
        self.c0, self.c1 = mesh.clusters
        self.namespace = f"mcs-conformance-{random.getrandbits(32)}"
        self.block = next(_SEQ)
        self.pods: dict[str, list[Pod]] = {c.name: [] for c in mesh.clusters}
        for c in mesh.clusters:
            c.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": self.namespace}})

    def close(self) -> None:
        for c in self.mesh.clusters:  # AfterEach: the namespace goes, and the exports with it
            c.api.delete(f"/api/v1/namespaces/{self.namespace}")
        for pods in self.pods.values():
            for p in pods:
                p.stop()

    # -- deploying

    def deploy_hello(self, c: Cluster, service: dict[str, Any], replicas: int = 1, statefulset: bool = False,
                     target: int = 42) -> dict[str, Any]:
        """The hello Deployment (or StatefulSet) and Service, and the slice its controller would write."""
        svc = c.api.create(core(self.namespace, "services"), service)
        pods = [Pod(c.pod_ip(self.block, len(self.pods[c.name]) + i), target) for i in range(replicas)]
        self.pods[c.name].extend(pods)
        endpoints = []
        for i, pod in enumerate(pods):
            ep: dict[str, Any] = {"addresses": [pod.ip], "conditions": {"ready": True, "serving": True,
                                                                       "terminating": False},
                                  "targetRef": {"kind": "Pod", "namespace": self.namespace, "name": f"hello-{i}"}}
            if statefulset:
                ep["hostname"] = f"hello-ss-{i}"
            endpoints.append(ep)
        ports = [{"name": p["name"], "port": p.get("targetPort", target) if isinstance(p.get("targetPort"), int)
                  else target, "protocol": p.get("protocol", "TCP")} for p in service["spec"]["ports"]]
        c.api.create(slices(self.namespace), {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{HELLO}-{random.getrandbits(20):05x}", "labels": {
                "kubernetes.io/service-name": HELLO,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports})
        return svc

    def export(self, c: Cluster, export: dict[str, Any] | None = None) -> None:
        c.api.create(mcs(self.namespace, "serviceexports"), export or hello_export())

    def unexport(self, c: Cluster) -> None:
        c.api.delete(mcs(self.namespace, "serviceexports", HELLO))

    def two_clusters(self, service2: dict[str, Any], export1: dict[str, Any] | None = None,
                     export2: dict[str, Any] | None = None, target2: int = 42) -> None:
        """newTwoClusterTestDriver's JustBeforeEach: export on c0, await the import, 1.1 s, then c1."""
        self.export(self.c0, export1)
        self.await_import(self.c0)
        time.sleep(1.1)  # creation timestamps have second granularity: c0's export is the older one
        self.deploy_hello(self.c1, service2, target=target2)
        self.export(self.c1, export2)

    # -- observing

    def get_import(self, c: Cluster) -> dict[str, Any] | None:
        return c.api.get(mcs(self.namespace, "serviceimports", HELLO))

    def await_import(self, c: Cluster, verify: Callable[[dict[str, Any]], Any] | None = None,
                     within: float = 20.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            si = self.get_import(c)
            assert si is not None, f"ServiceImport was not found on cluster {c.name}"
            if verify is not None:
                verify(si)
            return si
        return eventually(check, within, what=f"the ServiceImport on {c.name}")  # type: ignore[no-any-return]

    def await_no_import(self, c: Cluster) -> None:
        eventually(lambda: self.get_import(c) is None, 20, what=f"the ServiceImport on {c.name} to go")

    def ensure_import(self, c: Cluster) -> None:
        consistently(lambda: self.get_import(c) is not None, 5, what=f"the ServiceImport on {c.name}")

    def ensure_no_import(self, c: Cluster) -> None:
        consistently(lambda: self.get_import(c) is None, 5, what=f"no ServiceImport on {c.name}")

    def condition(self, c: Cluster, ctype: str) -> dict[str, Any] | None:
        se = c.api.get(mcs(self.namespace, "serviceexports", HELLO)) or {}
        return next((x for x in (se.get("status") or {}).get("conditions") or [] if x["type"] == ctype), None)

    def await_condition(self, c: Cluster, ctype: str, status: str) -> dict[str, Any]:
        return eventually(lambda: (self.condition(c, ctype) or {}).get("status") == status and self.condition(c, ctype),
                          20, what=f"{ctype}={status} on {c.name}")  # type: ignore[no-any-return]

    def mcs_slices(self, c: Cluster) -> list[dict[str, Any]]:
        items = (c.api.get(slices(self.namespace)) or {}).get("items", [])
        return [s for s in items if {"multicluster.kubernetes.io/service-name",
                                     "multicluster.kubernetes.io/source-cluster"} <= set(s["metadata"].get("labels",
                                                                                                       {}))]

    def fqdn(self, name: str = HELLO) -> str:
        return f"{name}.{self.namespace}.svc.{ZONE}"

    def lookup(self, c: Cluster, name: str, rtype: str = "A") -> tuple[int, list[str]]:
        """(rcode, answer texts) of `name`, asked of the site's DNS as nslookup in the request pod would."""
        q = dns.message.make_query(name, rtype)
        resp = dns.query.udp(q, c.dns[0], port=c.dns[1], timeout=3)
        return resp.rcode(), [rd.to_text() for rrset in resp.answer for rd in rrset]

    def nc(self, c: Cluster, name: str, port: int) -> str:
        """`echo hi | nc <fqdn> <port>` in the request pod: resolve with the site's DNS, connect, read."""
        rcode, answers = self.lookup(c, name)
        if not answers:
            return f"no address (rcode {rcode})"
        try:
            with socket.create_connection((answers[0], port), timeout=2) as s:
                s.settimeout(2)
                return s.recv(200).decode(errors="replace")
        except OSError as exc:
            return f"connect failed: {exc}"


@contextlib.contextmanager
def driver(mesh: MeshOfTwo) -> Iterator[Driver]:
    d = Driver(mesh)
    try:
        yield d
    finally:
        d.close()
