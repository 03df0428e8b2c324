"""A loopback mesh for traffic-policy tests: real east-west gateways with real TLS, named servers, west's egress.

Each site has its own network (so west reaches it through its gateway) unless it shares west's (then west
connects to its endpoints directly). A named server answers its name on a line, then echoes until EOF, so
a client sees where its connection landed. Policies reach the egress through a holder, as the agent's
policy reader hands them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from federation.core.policy.access import AccessState
from federation.core.policy.codec import from_document
from federation.core.policy.model import TrafficPolicy
from federation.core.records import Endpoint, EndpointPort, Gateway, Locality, ServiceExport, ServicePort
from federation.core.view import MeshView
from federation.runtime.values import Readable, Value
from gateway.eastwest import EastWestGateway
from gateway.egress import Egress
from gateway.enforcing import Policies
from gateway.settings import GatewaySettings
from gateway.tls import CertificateStore
from tests.pkihelp import Mesh, view

NS, SVC, PORT = "shop", "web", "tcp"
KEY = (NS, SVC, PORT)
EU1 = Locality("eu", "eu-1")


class NamedServer:
    """Answers `name\\n` to every connection, then echoes until EOF; `close()` makes connects refused."""

    def __init__(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.labels = tuple(sorted((labels or {}).items()))
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        self.open = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every open connection (a process that died)."""
        if self.server is not None:
            self.server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self._writers.add(writer)
        try:
            writer.write(self.name.encode() + b"\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()


@dataclass
class LabSite:
    """A site of the lab: its gateway (None for west, the client) and its servers."""

    name: str
    locality: Locality
    network: str
    servers: list[NamedServer]
    store: CertificateStore
    gateway: EastWestGateway | None = None
    gateway_port: int = 0


@dataclass
class Lab:
    """Sites serving shop/web:tcp, and west's egress (policies in `policies`)."""

    tmp: Path
    mesh: Mesh = field(default_factory=Mesh)
    sites: dict[str, LabSite] = field(default_factory=dict)
    view_value: Value[MeshView] = field(default_factory=lambda: Value(view([]), name="mesh", same=operator.is_))
    policies: Readable[Policies] = field(default_factory=lambda: Value({}, name="traffic policies"))
    egress: Egress | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def add(self, name: str, servers: list[NamedServer], locality: Locality = EU1,
                  network: str | None = None, access: Readable[AccessState] | None = None) -> LabSite:
        """A site; with its own network it gets a real gateway, on west's network its endpoints are direct."""
        site = LabSite(name, locality, network or f"net-{name}", servers,
                       CertificateStore(self.mesh.site_ca(name), "gw", self.tmp / name))
        self.sites[name] = site
        for s in servers:
            await s.start()
        if name != "west" and site.network != "net-west":
            settings = GatewaySettings(listen_address="127.0.0.1", listen_port=0, connect_timeout=1.0)
            site.gateway = EastWestGateway(name, self.view_value, site.store.server, site.store.bundle, settings,
                                           access=access)
            await site.gateway.start()
            site.gateway_port = site.gateway.address[1]
            self._tasks.append(asyncio.create_task(site.gateway.run(), name=f"gateway-{name}"))
        self.publish()
        return site

    def publish(self) -> None:
        """Hand every part the view of the sites and their servers now."""
        sites, exports = [], []
        for s in self.sites.values():
            gws = (Gateway("gw", "127.0.0.1", s.gateway_port),) if s.gateway_port else ()
            sites.append(self.mesh.site(s.name, network=s.network, gateways=gws, locality=s.locality))
            if s.servers:
                eps = tuple(Endpoint(addresses=("127.0.0.1",), ports=(EndpointPort(PORT, srv.port),),
                                     labels=srv.labels) for srv in s.servers)
                exports.append(ServiceExport(site=s.name, namespace=NS, name=SVC, ports=(ServicePort(PORT, 80),),
                                             endpoints=eps))
        self.view_value.set(view(sites, exports))

    async def start_egress(self, locality: Locality = EU1, seed: int = 7,
                           **settings: Any) -> Egress:
        if "west" not in self.sites:
            await self.add("west", [], locality=locality)
        west = self.sites["west"]
        self.egress = Egress("west", self.view_value, west.store.client, west.store.bundle,
                             GatewaySettings(**{"pool_size": 1, **settings}), registry=self.registry,
                             policies=self.policies)
        self.egress.enforcer.rng = random.Random(seed)
        await self.egress.start()
        self._tasks.append(asyncio.create_task(self.egress.run(), name="egress-run"))
        return self.egress

    @property
    def address(self) -> tuple[str, int]:
        assert self.egress is not None
        return self.egress.listeners()[KEY]

    def set_policy(self, spec: str) -> None:
        """Put the TrafficPolicy of shop/web with `spec` (YAML) in force, as the reader would."""
        assert isinstance(self.policies, Value)
        self.policies.set({(NS, SVC): policy(spec)})

    def action(self, name: str) -> float:
        """How often the enforcer took `name` (meshfed_egress_policy_actions_total)."""
        assert self.egress is not None
        return float(self.egress.enforcer.metrics.actions.labels(name)._value.get())

    def attempts(self, route: str, result: str) -> float:
        assert self.egress is not None
        return float(self.egress.metrics.attempts.labels(route, result)._value.get())

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.egress is not None:
            await self.egress.close()
        for s in self.sites.values():
            if s.gateway is not None:
                await s.gateway.close()
            for srv in s.servers:
                await srv.close()
            s.store.close()


def policy(spec: str) -> TrafficPolicy:
    """A TrafficPolicy of shop/web from its `spec` in YAML."""
    doc = {"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
           "metadata": {"namespace": NS, "name": SVC}, "spec": yaml.safe_load(spec) or {}}
    return from_document(doc)


@contextlib.asynccontextmanager
async def lab(tmp: Path) -> AsyncIterator[Lab]:
    it = Lab(tmp)
    try:
        yield it
    finally:
        await it.close()


async def who(addr: tuple[str, int], timeout: float = 5.0) -> str:
    """The name of the server a new connection lands on; "" if it was reset or closed first, "timeout" if
    nothing came within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(*addr)
            try:
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
    except ConnectionError:
        return ""
    except TimeoutError:
        return "timeout"
    return line.decode().strip()


async def many(addr: tuple[str, int], n: int, parallel: int = 16) -> list[str]:
    """`who` for `n` connections, at most `parallel` at once."""
    sem = asyncio.Semaphore(parallel)

    async def one() -> str:
        async with sem:
            return await who(addr)

    return list(await asyncio.gather(*(one() for _ in range(n))))
