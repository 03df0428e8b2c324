"""The asyncio shell of the federated DNS server: UDP and TCP sockets around the pure answering core.

`run()` follows the value holders it was given (mesh view, ClusterSetIP addresses, sites to use last)
and rebuilds the zone after every change; `update()` is that step by itself. Until the first complete
mesh view every name in the zone gets SERVFAIL (nothing authoritative before the initial sync).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import time
from collections.abc import Coroutine, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, Metric

from federation.core.endpoints import EndpointAddresses
from federation.core.ratelimit import LogLimiter
from federation.core.view import MeshView, VipTable
from federation.dns.answering import Answerer, Forward
from federation.dns.fastpath import FastPath
from federation.dns.forwarding import Forwarder, read_resolv_conf, upstream_addresses, wait_all
from federation.dns.nodes import Zone
from federation.dns.settings import DnsSettings, split_hostport
from federation.dns.udp import UdpSocket, udp_socket
from federation.dns.zone import Stale, ZoneBuilder
from federation.runtime.values import Readable, follow

log = logging.getLogger(__name__)

MAX_FORWARDS = 512
"""Forwarded queries in flight; beyond this a query gets SERVFAIL at once instead of queueing."""
MAX_TCP_CLIENTS = 256
"""Open TCP connections; more are closed on accept."""
TCP_IDLE = 10.0
"""Seconds an idle TCP connection stays open (RFC 7766 6.2.3 suggests seconds, not minutes)."""


class DnsServer:
    """Answers the federated zone on UDP and TCP, forwards the rest, and is fed mesh snapshots."""

    def __init__(
        self,
        settings: DnsSettings,
        *,
        local_site: str,
        mesh: Readable[MeshView] | None = None,
        vips: Readable[VipTable] | None = None,
        last_resort: Readable[frozenset[Stale]] | None = None,
        registry: CollectorRegistry | None = None,
        live: Readable[DnsSettings] | None = None,
        endpoints: Readable[EndpointAddresses] | None = None,
    ) -> None:
        self.settings = settings
        self._live = live
        """Settings to follow (a reload): TTL, forwarding, upstreams and site pinning apply to the next answer."""
        self._local_site = local_site
        self._inputs = (mesh, vips, last_resort)
        self._endpoints = endpoints
        """This site's addresses for headless endpoints of other networks (None: their own are answered)."""
        self._configure(settings)
        self.zone: Zone | None = None
        self._forwarder: Forwarder | None = None
        self._udp: list[UdpSocket] = []
        self._tcp: list[asyncio.Server] = []
        self._closed_fast = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._clients: set[asyncio.Task[None]] = set()
        self._limiter = LogLimiter(interval=10.0, capacity=256)
        reg = registry if registry is not None else CollectorRegistry()
        # Plain ints on the hot path (a prometheus Counter takes a lock per increment), exported by a collector.
        self._q = {(t, p): 0 for t in ("udp", "tcp") for p in ("fast", "slow", "forward", "dropped")}
        self._err = dict.fromkeys(("internal", "upstream", "overload"), 0)
        reg.register(_Counters(self))
        self._names = Gauge("meshfed_dns_zone_names", "Names in the federated zone", registry=reg)
        self._build = Gauge("meshfed_dns_zone_build_seconds", "Time the last zone rebuild took", registry=reg)
        self._synced = Gauge("meshfed_dns_synced", "1 once the first mesh snapshot arrived", registry=reg)

    def _configure(self, settings: DnsSettings) -> None:
        self.settings = settings
        self._builder = ZoneBuilder(
            settings.zone, local_site=self._local_site, ttl=settings.ttl, site_pinning=settings.site_pinning
        )
        self.answerer = Answerer(
            self._builder.origin, forwarding=settings.forwarding, max_udp=settings.max_udp_payload
        )
        self.fast = FastPath(self.answerer)

    def _reconfigure(self, settings: DnsSettings) -> None:
        """Answer with new settings from the next question on (the zone is rebuilt by the caller)."""
        old = self.settings
        self._configure(settings)
        for worker in self._udp:  # each socket holds the fast path's answer method, for its hot loop
            worker._answer = self.fast.answer
        if self._forwarder is not None and (settings.upstreams, settings.forward_timeout) != (
                old.upstreams, old.forward_timeout):
            ours = self.udp_addresses + self.tcp_addresses
            self._forwarder = Forwarder(upstream_addresses(settings.upstreams, read_resolv_conf(), ours),
                                        settings.forward_timeout)
        log.info("dns settings reloaded (ttl %ds, forwarding %s)", settings.ttl, "on" if settings.forwarding else "off")

    # -- lifecycle

    async def start(self) -> None:
        """Bind every configured UDP and TCP address; ports given as 0 are read back with the properties."""
        s = self.settings
        for attempt in range(20):
            try:
                await self._bind()
                break
            except OSError as exc:
                await self.close()
                # The port the kernel gave TCP is taken for UDP: pick another pair.
                if exc.errno != errno.EADDRINUSE or attempt == 19 or not _any_port_zero(s):
                    raise
            except BaseException:
                await self.close()
                raise
        ours = self.udp_addresses + self.tcp_addresses
        # The apex is shared by every zone the builder made, so a zone already served sees the NS glue too.
        self._builder.set_nameservers(s.nameserver_addresses or own_addresses(ours))
        self._forwarder = Forwarder(upstream_addresses(s.upstreams, read_resolv_conf(), ours), s.forward_timeout)
        if s.forwarding and not self._forwarder.upstreams:
            log.warning("dns forwarding is on but no upstream resolver is known; other names get SERVFAIL")
        log.info("dns serving %s on udp %s tcp %s", s.zone, self.udp_addresses, self.tcp_addresses)

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        # TCP first: a kernel-chosen TCP port is free of TIME_WAIT leftovers, which a port chosen for
        # UDP often is not; UDP then takes the same port, since clients retry a TC answer there.
        for text in s.tcp:
            host, port = split_hostport(text)
            self._tcp.append(await asyncio.start_server(self._tcp_client, host, port, reuse_address=True))
        tcp_ports = dict(self.tcp_addresses)
        for text in s.udp:
            host, port = split_hostport(text)
            if port == 0 and host in tcp_ports:
                port = tcp_ports[host]
            for _ in range(s.workers):
                worker = UdpSocket(self, udp_socket(host, port, reuse=s.workers > 1), loop)
                self._udp.append(worker)
                port = worker.address[1]

    async def close(self) -> None:
        """Stop listening and end every connection and forwarded query."""
        for w in self._udp:
            w.close()
            self._closed_fast += w.fast
        self._udp.clear()
        for srv in self._tcp:
            srv.close()
        await wait_all(self._clients | self._tasks)
        for srv in self._tcp:
            await srv.wait_closed()
        self._tcp.clear()

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def udp_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every bound UDP socket, one per address (workers share it)."""
        out: list[tuple[str, int]] = []
        for w in self._udp:
            if w.address not in out:
                out.append(w.address)
        return out

    @property
    def tcp_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every TCP listener."""
        return [(str(s[0]), int(s[1])) for srv in self._tcp for s in (sock.getsockname() for sock in srv.sockets)]

    # -- feeding

    async def run(self) -> None:
        """Answer from the holders given at construction, rebuilding after every change of any of them."""
        mesh, vips, last_resort = self._inputs
        if mesh is None:
            raise ValueError("DnsServer.run needs the mesh view holder")
        held = [h for h in (*self._inputs, self._live, self._endpoints) if h is not None]
        async for _ in follow(*held):
            if self._live is not None and self._live.get() is not self.settings:
                self._reconfigure(self._live.get())
            view = mesh.get()
            if view.complete:
                await self.rebuild(view, last_resort.get() if last_resort is not None else frozenset(),
                                   vips.get() if vips is not None else {})

    async def rebuild(self, view: MeshView, stale_sites: frozenset[Stale], vips: VipTable) -> None:
        """`update`, with the zone built on a worker thread: the loop keeps answering meanwhile.

        A full build at 1,000 sites takes seconds of Python; on the serving loop it delayed every answer
        and tunnel byte that long. The builder is used by this task alone and works on immutable views;
        answers read its name table as it changes (each service's names consistent, a mix of old and new
        services for the moment of a build), and the fast path forgets what the build changed once it is done.
        """
        started = time.perf_counter()
        endpoints = self._endpoints.get() if self._endpoints is not None else None
        zone = await asyncio.to_thread(self._builder.build, view, stale_sites, vips, endpoints)
        self._installed(zone, started)

    def update(self, view: MeshView, stale_sites: frozenset[Stale] = frozenset(), vips: VipTable | None = None) -> None:
        """Answer from `view` from now on; `stale_sites` (stale records or gateways down) are used last;
        `vips` gives the address of each ClusterSetIP service."""
        started = time.perf_counter()
        endpoints = self._endpoints.get() if self._endpoints is not None else None
        self._installed(self._builder.build(view, stale_sites, vips or {}, endpoints), started)

    def _installed(self, zone: Zone, started: float) -> None:
        self.fast.update(zone)
        self.zone = zone
        self._names.set(len(zone.nodes))
        self._build.set(time.perf_counter() - started)
        self._synced.set(1)

    # -- answering

    def answer_sync(self, data: bytes, *, udp: bool) -> bytes | Forward | None:
        """The immediate answer to one message (a `Forward` still has to go upstream)."""
        out = self.fast.answer(data, udp)
        if out is not None:
            self._q["udp" if udp else "tcp", "fast"] += 1
            return out
        return self._slow(data, udp=udp)

    def _slow(self, data: bytes, *, udp: bool) -> bytes | Forward | None:
        transport = "udp" if udp else "tcp"
        try:
            res = self.answerer.handle(data, self.zone, udp=udp)
        except Exception:
            self._err["internal"] += 1
            if self._limiter.allow("internal", time.monotonic()):
                log.exception("dns answering failed (a bug); answering SERVFAIL")
            res = self.answerer.servfail(data)
        if res is None:
            self._q[transport, "dropped"] += 1
        elif isinstance(res, Forward):
            self._q[transport, "forward"] += 1
        else:
            self._q[transport, "slow"] += 1
        return res

    async def forward(self, fwd: Forward, *, udp: bool) -> bytes | None:
        """The upstream's answer to `fwd`, or SERVFAIL when no upstream answered in time."""
        out = None
        if self._forwarder is not None and self._forwarder.upstreams:
            limit = self.answerer.udp_limit(fwd.query) if udp else 65535
            out = await self._forwarder.resolve(fwd.query, udp=udp, limit=limit)
        if out is None:
            self._err["upstream"] += 1
            out = self.answerer.servfail(fwd.wire)
        return out

    def counts(self) -> dict[tuple[str, str], int]:
        """Queries so far by (transport, path): fast, slow (dnspython), forward, dropped."""
        out = dict(self._q)
        out["udp", "fast"] += self._closed_fast + sum(w.fast for w in self._udp)
        return out

    def _datagram(self, data: bytes, addr: tuple[str, int], transport: UdpSocket) -> None:
        res = self._slow(data, udp=True)
        if isinstance(res, bytes):
            transport.sendto(res, addr)
        elif isinstance(res, Forward):
            if len(self._tasks) >= MAX_FORWARDS:
                self._err["overload"] += 1
                fail = self.answerer.servfail(data)
                if fail is not None:
                    transport.sendto(fail, addr)
                return
            self._spawn(self._forward_udp(res, addr, transport))

    async def _forward_udp(self, fwd: Forward, addr: tuple[str, int], transport: UdpSocket) -> None:
        out = await self.forward(fwd, udp=True)
        if out is not None and not transport.is_closing():
            transport.sendto(out, addr)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="dns-forward")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._clients) >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self._clients.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                res = self.answer_sync(data, udp=False)
                if isinstance(res, Forward):
                    res = await self.forward(res, udp=False)
                if res is None:
                    break
                writer.write(len(res).to_bytes(2, "big") + res)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()


class _Counters:
    """Exports the server's plain-int counters to Prometheus at scrape time."""

    def __init__(self, server: DnsServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        queries = CounterMetricFamily("meshfed_dns_queries", "DNS queries by transport and the path that answered",
                                      labels=["transport", "path"])
        for (transport, path), n in self._server.counts().items():
            queries.add_metric([transport, path], n)
        yield queries
        errors = CounterMetricFamily("meshfed_dns_errors", "DNS queries that failed, by reason", labels=["reason"])
        for reason, n in self._server._err.items():
            errors.add_metric([reason], n)
        yield errors


def own_addresses(bound: list[tuple[str, int]]) -> list[str]:
    """The addresses this server answers on, wildcards left out: what the zone's NS glue names."""
    out = []
    for host, _ in bound:
        if host not in out and not ipaddress.ip_address(host).is_unspecified:
            out.append(host)
    return out


def _any_port_zero(settings: DnsSettings) -> bool:
    return any(split_hostport(t)[1] == 0 for t in (*settings.udp, *settings.tcp))
