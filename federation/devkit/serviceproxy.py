"""The development cluster's kube-proxy: makes a Service's ClusterIP:port reach its EndpointSlices' endpoints.

With the development API server's service CIDR inside 127.0.0.0/8, every ClusterIP is an address this
host can bind, so clients (tests, the demo) can use ClusterIPs as pods do in a real cluster: for each
TCP port of each Service that has a ClusterIP, a listener on ClusterIP:port forwards each connection
to a ready endpoint of the Service's slices (`kubernetes.io/service-name`), round robin, or the same
endpoint per client address with `sessionAffinity: ClientIP`. UDP and SCTP ports are not proxied.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from federation.devkit.apiserver.store import Store, Watcher

log = logging.getLogger(__name__)

Backend = tuple[str, int]
ListenKey = tuple[str, int]
"""(ClusterIP, port)"""


def desired(services: Sequence[Mapping[str, Any]], slices: Sequence[Mapping[str, Any]],
            ) -> dict[ListenKey, tuple[list[Backend], bool]]:
    """(ClusterIP, port) -> (ready backends, client-IP affinity) for every TCP port of every Service. Pure."""
    by_service: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for sl in slices:
        meta = sl.get("metadata") or {}
        name = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        if name:
            by_service.setdefault((meta.get("namespace", ""), name), []).append(sl)
    out: dict[ListenKey, tuple[list[Backend], bool]] = {}
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ips = [ip for ip in spec.get("clusterIPs") or [] if ip not in ("", "None")]
        sticky = spec.get("sessionAffinity") == "ClientIP"
        for port in spec.get("ports") or []:
            if port.get("protocol", "TCP") != "TCP":
                continue
            backends: list[Backend] = []
            for sl in by_service.get((meta.get("namespace", ""), meta.get("name", "")), []):
                target = next((p.get("port") for p in sl.get("ports") or []
                               if (p.get("name") or "") == (port.get("name") or "")
                               and p.get("protocol", "TCP") == "TCP"), None)
                if not isinstance(target, int):
                    continue
                for ep in sl.get("endpoints") or []:
                    cond = ep.get("conditions") or {}
                    if cond.get("ready") is not False and cond.get("terminating") is not True:
                        backends.extend((a, target) for a in ep.get("addresses") or [])
            for ip in ips:
                out[(ip, int(port["port"]))] = (backends, sticky)
    return out


class ServiceProxy:
    """Follows the store's Services and EndpointSlices and keeps one TCP listener per ClusterIP:port."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.routes: dict[ListenKey, tuple[list[Backend], bool]] = {}
        self._servers: dict[ListenKey, asyncio.Server] = {}
        self._turn: dict[ListenKey, int] = {}
        self._affinity: dict[tuple[ListenKey, str], Backend] = {}
        self._wake = asyncio.Event()
        self._failed: set[ListenKey] = set()

    async def run(self) -> None:
        """Until cancelled: reconcile the listeners after every change of a Service or EndpointSlice."""
        watchers = [Watcher(self.store.resources[p], "v1", None, False) for p in ("services", "endpointslices")]
        for w in watchers:
            self.store.watch(w, "")
        pumps = [asyncio.create_task(self._pump(w), name=f"serviceproxy-{w.resource.plural}") for w in watchers]
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._reconcile()
        finally:
            for p in pumps:
                p.cancel()
            for w in watchers:
                self.store.watchers.discard(w)
            await asyncio.gather(*pumps, return_exceptions=True)
            for srv in self._servers.values():
                srv.close()
            self._servers.clear()

    async def _pump(self, watcher: Watcher) -> None:
        while True:
            await watcher.queue.get()
            self._wake.set()

    async def _reconcile(self) -> None:
        self.routes = desired(self.store.list("services", None), self.store.list("endpointslices", None))
        for key in [k for k in self._servers if k not in self.routes]:
            self._servers.pop(key).close()
        for key in self.routes:
            if key in self._servers or not _local(key[0]):
                continue
            try:
                self._servers[key] = await asyncio.start_server(self._handler(key), key[0], key[1],
                                                                reuse_address=True)
                self._failed.discard(key)
            except OSError as exc:
                if key not in self._failed:
                    log.warning("service proxy cannot listen on %s:%d: %s", *key, exc)
                    self._failed.add(key)

    def _handler(self, key: ListenKey) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._client(key, reader, writer)

        return handle

    def _pick(self, key: ListenKey, client: str) -> list[Backend]:
        backends, sticky = self.routes.get(key, ([], False))
        if not backends:
            return []
        if sticky and self._affinity.get((key, client)) in backends:
            first = self._affinity[(key, client)]
            return [first, *(b for b in backends if b != first)]
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        start = turn % len(backends)
        return backends[start:] + backends[:start]

    async def _client(self, key: ListenKey, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        try:
            for backend in self._pick(key, str(peer[0])):
                try:
                    up_reader, up_writer = await asyncio.open_connection(*backend)
                except OSError:
                    continue  # as kube-proxy's userspace mode: try the next endpoint
                self._affinity[(key, str(peer[0]))] = backend
                await _splice(reader, writer, up_reader, up_writer)
                return
        finally:
            writer.close()


async def _splice(a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
                  b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter) -> None:
    async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, OSError):
            pass

    try:
        await asyncio.gather(copy(a_reader, b_writer), copy(b_reader, a_writer))
    finally:
        b_writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await b_writer.wait_closed()


def _local(ip: str) -> bool:
    """Only loopback ClusterIPs are bound: nothing else on this host belongs to the development cluster."""
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
