"""`DevApiServer`: the development Kubernetes API server, on 127.0.0.1 with TLS, for tests, the demo and kubectl.

It serves Namespaces, Services, EndpointSlices, CustomResourceDefinitions and whatever those CRDs
define (by default every CRD file of deploy/kubernetes/: the MCS ServiceExport and ServiceImport, and
meshfed's TrafficPolicy, AccessPolicy and MeshAccessPolicy), with
discovery, list/watch (resourceVersion, 410 Gone, bookmarks), the four write verbs and Tables, so
the agent and a real `kubectl` both work against it. TLS certificates come from meshfed's own CA
code; clients authenticate with the bearer token or a client certificate from the same CA.

Test hooks: `put`/`remove` (a controller or kubectl acting), `expire` (compaction: open watches get
a 410 ERROR event), `drop_watches` (connections cut), `bookmark`, `unavailable` (503 for everything);
`calls` records every request as an RBAC (verb, group, resource) triple.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from federation.devkit.apiserver.admission import ServiceIPs
from federation.devkit.apiserver.http import Handler
from federation.devkit.apiserver.operations import Operations
from federation.devkit.apiserver.store import Obj, Store, Watcher
from federation.pki.issuing import Issued, cert_pem, key_pem
from federation.pki.servercerts import issue_client, issue_server, new_ca
from federation.runtime.files import write_private

REPO_CRDS = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes" / "crds.yaml"
"""The MCS CRDs a source checkout ships."""
REPO_CRD_FILES = tuple(REPO_CRDS.parent / f for f in ("crds.yaml", "policy-crds.yaml", "access-crds.yaml"))
"""Every CRD file deploy/kubernetes/kustomization.yaml installs; served from the start unless the caller says
otherwise, as on a cluster the manifests were applied to."""
TOKEN = "meshfed-dev-token"  # noqa: S105 - the development server's default bearer token, not a secret
DEFAULT_SERVICE_CIDRS = ("10.96.0.0/16",)
"""kubeadm's default service CIDR: single-stack IPv4, as most development clusters run."""


def load_crds(path: Path) -> list[Obj]:
    """The CustomResourceDefinitions in a YAML file (other documents are ignored)."""
    docs = yaml.safe_load_all(path.read_text())
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]


class DevApiServer:
    """`async with DevApiServer() as api:` then `api.kubeconfig(path)` for the agent or kubectl."""

    def __init__(self, *, crds: list[Obj] | None = None, service_cidrs: tuple[str, ...] = DEFAULT_SERVICE_CIDRS,
                 host: str = "127.0.0.1", port: int = 0, tls: bool = True, token: str = TOKEN,
                 name: str = "dev") -> None:
        self.name = name
        """The cluster's name in kubeconfigs (context, cluster and user entries)."""
        self.store = Store()
        self.ops = Operations(self.store, ServiceIPs(service_cidrs))
        self.token = token
        self.handler = Handler(self.ops, frozenset({token}), lambda: f"{self.host}:{self.port}")
        self.host = host
        self.port = port
        self.tls = tls
        if crds is None:
            crds = [c for path in REPO_CRD_FILES if path.exists() for c in load_crds(path)]
        self._crds = crds
        self._runner: web.AppRunner | None = None
        self._dir: Path | None = None
        self.ca_pem = b""
        self.client: Issued | None = None
        """A client certificate (user `admin`, group `system:masters`) for kubeconfigs that use one."""

    async def __aenter__(self) -> DevApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Load the CRDs, make the certificates and listen; `port` is known afterwards."""
        for crd in self._crds:
            self.ops.create(self.store.resources["customresourcedefinitions"], "v1", "", crd)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handler.handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._tls_context() if self.tls else None)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def kubeconfig(self, path: Path, *, client_cert: bool = False) -> Path:
        """Write a kubeconfig for this server (bearer token, or the client certificate) and return its path."""
        write_private(path, yaml.safe_dump(self.kubeconfig_data(client_cert=client_cert), sort_keys=False).encode())
        return path

    def kubeconfig_data(self, *, client_cert: bool = False) -> dict[str, Any]:
        """The kubeconfig as data, one cluster, user and context all named after the server."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.tls:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        if client_cert and self.client is not None:
            user = {"client-certificate-data": base64.b64encode(self.client.chain_pem()).decode(),
                    "client-key-data": base64.b64encode(self.client.key_pem()).decode()}
        else:
            user = {"token": self.token}
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": self.name, "preferences": {},
            "clusters": [{"name": self.name, "cluster": cluster}],
            "users": [{"name": self.name, "user": user}],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": self.name}}],
        }  # fmt: skip

    # ------------------------------------------------------------ test hooks

    @property
    def objects(self) -> dict[str, dict[tuple[str, str], Obj]]:
        """Stored objects per resource plural, keyed by (namespace, name)."""
        return self.store.objects

    @property
    def calls(self) -> set[tuple[str, str, str]]:
        return self.handler.calls

    @property
    def watchers(self) -> set[Watcher]:
        return self.store.watchers

    @property
    def watch_count(self) -> int:
        return self.handler.watch_count

    @property
    def list_count(self) -> int:
        return self.handler.list_count

    @property
    def unavailable(self) -> bool:
        return self.handler.unavailable

    @unavailable.setter
    def unavailable(self, value: bool) -> None:
        self.handler.unavailable = value

    def put(self, obj: Obj) -> Obj:
        """Create or replace an object as another client would (status and given times included)."""
        return self.ops.put(obj)

    def remove(self, plural: str, namespace: str, name: str) -> None:
        self.ops.delete(self.store.resources[plural], (namespace, name))

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        return self.store.get(plural, (namespace, name))

    def expire(self) -> None:
        """Compact history: every open watch gets a 410 Expired ERROR event, as after etcd compaction."""
        self.store.expire()

    def drop_watches(self) -> None:
        """Cut every watch connection without a clean end."""
        self.store.drop_watches()

    def bookmark(self) -> None:
        self.store.bookmark()

    # ------------------------------------------------------------ TLS

    def _tls_context(self) -> ssl.SSLContext:
        now = dt.datetime.now(dt.UTC)
        ca = new_ca(f"meshfed development cluster {self.name}", now)
        hosts = sorted({self.host, "127.0.0.1", "localhost"})
        server = issue_server(ca, "kube-apiserver", hosts, now)
        self.client = issue_client(ca, "admin", now, groups=("system:masters",))
        self.ca_pem = cert_pem(ca.cert)
        self._dir = Path(tempfile.mkdtemp(prefix="meshfed-apiserver-"))
        write_private(self._dir / "server.key", key_pem(server.key))
        (self._dir / "server.crt").write_bytes(server.chain_pem())
        (self._dir / "ca.crt").write_bytes(self.ca_pem)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self._dir / "server.crt", self._dir / "server.key")
        ctx.load_verify_locations(self._dir / "ca.crt")
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a client certificate is one way in; the token is the other
        return ctx


def random_token() -> str:
    """A fresh bearer token for a server that others can reach."""
    return secrets.token_urlsafe(24)
