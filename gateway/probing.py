"""Active probes of remote gateways: ALIVE or DOWN with a reason, a minute of latencies, the clock skew.

For every other site this site imports from (a site with an export in the mesh view and a gateway), the
prober opens a fresh mTLS connection as the egress would (the peer's SPIFFE ID must name a gateway of that
site), sends a preamble `Probe` and times the answer. A fresh connection each time, not a pooled tunnel:
it proves that a new client would get in now (a pooled tunnel can outlive a gateway's broken certificate).
Cost is bounded at any mesh size: at most `gateway.probe_rate` probes start per second and
`gateway.probe_concurrency` run at once, so 1,000 sites are probed every 100 s rather than every interval.

Beside these, the prober runs the per-service probes ("a ready endpoint for X?", gateway.serviceprobes) over
tunnels kept open, and puts what they find in the document of each gateway (`serviceHealth`).

`LatencyWindow` and `probe_targets` are pure; `Prober` is the shell. `GatewayState.describe` is the
shape of one entry of the admin's /gateways document (docs/operations.md, "meshfed gateways").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

from federation.core.errors import RemoteProtocolError
from federation.core.records import Gateway
from federation.core.view import MeshView
from federation.pki.verifying import PeerRejected
from federation.runtime.values import Readable
from gateway.pool import PoolKey, TunnelPool
from gateway.preamble import ProbeAnswer, Request, Status
from gateway.reachability import Reachability
from gateway.serviceprobes import Policies, ServiceProbes
from gateway.settings import GatewaySettings
from gateway.tls import Bundle, ResumingContext

log = logging.getLogger(__name__)

WINDOW = 60.0
"""Seconds of latencies kept per gateway: `meshfed gateways` shows p50/p95/p99 over the last minute."""
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Probe latency histogram buckets: loopback (1 ms) to a congested intercontinental link (seconds)."""

TargetKey = tuple[str, str]
"""(site, gateway name)"""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe: alive or not (with the reason), its timings and the clock skew it measured."""

    ok: bool
    reason: str = ""
    """Why the gateway is down (empty when alive), or a note on an alive one (an older agent)."""
    handshake: float | None = None
    """Seconds for TCP connect and the TLS handshake."""
    rtt: float | None = None
    """Seconds from the probe sent to its answer (the tunnel's round trip)."""
    skew: float | None = None
    """The peer's clock minus ours, in seconds, at the middle of the round trip (None: not measured)."""
    at: float = 0.0
    """When the probe ended (seconds since the epoch)."""
    stage: str = ""
    """Where a failed probe stopped: connect (TCP), tls (the handshake), identity (not a gateway of that site),
    answer (the tunnel opened but the answer was wrong or missing)."""


class LatencyWindow:
    """Latencies of the last `span` seconds, with their quantiles. Pure: time comes in as an argument."""

    def __init__(self, span: float = WINDOW) -> None:
        self.span = span
        self._samples: collections.deque[tuple[float, float]] = collections.deque()

    def add(self, now: float, seconds: float) -> None:
        """Record one latency measured at `now`."""
        self._samples.append((now, seconds))
        self._trim(now)

    def quantiles(self, now: float) -> dict[str, float] | None:
        """p50, p95 and p99 (nearest rank, seconds) of the window, and its sample count; None when empty."""
        self._trim(now)
        if not self._samples:
            return None
        values = sorted(s for _, s in self._samples)
        return {"p50": _rank(values, 0.50), "p95": _rank(values, 0.95), "p99": _rank(values, 0.99),
                "samples": float(len(values))}

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.span:
            self._samples.popleft()


def _rank(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, int(q * len(values) + 0.999999) - 1))]


@dataclass(slots=True)
class GatewayState:
    """What the prober knows of one remote gateway."""

    site: str
    gateway: Gateway
    window: LatencyWindow = field(default_factory=LatencyWindow)
    last: ProbeResult | None = None
    since: float = 0.0
    """When the gateway became alive or down (seconds since the epoch)."""
    failures: int = 0
    """Probes failed in a row."""
    probes: int = 0

    @property
    def alive(self) -> bool | None:
        """True or False after the first probe; None before it."""
        return None if self.last is None else self.last.ok

    def record(self, result: ProbeResult) -> None:
        """Take one probe's result."""
        if self.last is None or self.last.ok != result.ok:
            self.since = result.at
        self.last = result
        self.probes += 1
        self.failures = 0 if result.ok else self.failures + 1
        if result.ok and result.rtt is not None:
            self.window.add(result.at, result.rtt)

    def describe(self, now: float, pool: TunnelPool | None, services: list[str]) -> dict[str, Any]:
        """One entry of the /gateways document (its shape is documented: other pages read it)."""
        last = self.last
        q = self.window.quantiles(now)
        return {
            "site": self.site, "gateway": self.gateway.name,
            "address": f"{self.gateway.address}:{self.gateway.port}",
            "alive": self.alive,
            "state": "UNKNOWN" if last is None else "ALIVE" if last.ok else "DOWN",
            "reason": last.reason if last is not None else "not probed yet",
            "since": self.since or None,
            "lastProbe": last.at if last is not None else None,
            "failures": self.failures, "probes": self.probes,
            "handshakeMs": _ms(last.handshake) if last is not None else None,
            "rttMs": _ms(last.rtt) if last is not None else None,
            "latencyMs": None if q is None else {k: (v if k == "samples" else _ms(v)) for k, v in q.items()},
            "clockSkewSeconds": None if last is None or last.skew is None else round(last.skew, 3),
            "tunnels": {"pooled": pool.idle if pool is not None else 0,
                        "open": (pool.idle + pool.in_use) if pool is not None else 0},
            "services": services,
        }  # fmt: skip


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def probe_targets(view: MeshView, own_site: str) -> dict[TargetKey, tuple[str, Gateway, list[str]]]:
    """Every gateway of another site this site imports from, with the services behind it. Pure."""
    services: dict[str, list[str]] = {}
    for (ns, name), svc in view.services().items():
        for site in svc.sites:
            if site != own_site:
                services.setdefault(site, []).append(f"{ns}/{name}")
    out: dict[TargetKey, tuple[str, Gateway, list[str]]] = {}
    for site in sorted(services):
        record = view.sites.get(site)
        for gateway in record.gateways if record is not None else ():
            out[(site, gateway.name)] = (site, gateway, services[site])
    return out


class ProbeMetrics:
    """meshfed_gateway_alive{site,gateway} and meshfed_gateway_probe_seconds{site}."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.alive = Gauge("meshfed_gateway_alive", "1 if the last probe of a remote gateway got an answer, else 0",
                           ["site", "gateway"], registry=registry)
        self.latency = Histogram("meshfed_gateway_probe_seconds",
                                 "Round trip of a probe through a fresh tunnel to a remote gateway", ["site"],
                                 buckets=BUCKETS, registry=registry)


class Prober:
    """Probes remote gateways until cancelled; `states` and `document()` say what it found."""

    def __init__(self, site: str, mesh: Readable[MeshView], context: ResumingContext, bundle: Bundle,
                 settings: Readable[GatewaySettings], registry: CollectorRegistry | None = None,
                 pools: Mapping[PoolKey, TunnelPool] | None = None,
                 clock: Callable[[], float] = time.time, reach: Reachability | None = None,
                 policies: Readable[Policies] | None = None) -> None:
        self.site = site
        self.mesh = mesh
        self.context = context
        self.trust = bundle
        self._settings = settings
        self.metrics = ProbeMetrics(registry or CollectorRegistry())
        self.pools: Mapping[PoolKey, TunnelPool] = pools if pools is not None else {}
        """The egress's tunnel pools, for the tunnels open and pooled per gateway."""
        self.reach = reach
        """The egress's view of which sites' gateways fail (DNS answers them last): probes feed it too, so a dead
        site leaves DNS answers with no client traffic at all, and comes back with its first good probe."""
        self.states: dict[TargetKey, GatewayState] = {}
        self._by_site: dict[str, set[TargetKey]] = {}
        """The targets of each site: "is every gateway of this site down?" looks at that site's alone."""
        self.service_probes = ServiceProbes(site, mesh, context, bundle, settings, policies,
                                            self.metrics.registry, reach.services if reach is not None else None)
        """Per service: "a ready endpoint for X?" (gateway.serviceprobes), run beside the gateway probes."""
        self.services: dict[TargetKey, list[str]] = {}
        self._clock = clock
        self._generation = -1
        self._nonce = random.getrandbits(63)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Probe every target, round after round, and the services behind them, until cancelled (idle while
        probe_interval is 0)."""
        async with asyncio.TaskGroup() as tg:  # either failing ends both, and the agent says which failed
            tg.create_task(self.service_probes.run(), name="service-probes")
            tg.create_task(self._rounds(), name="gateway-probe-rounds")

    async def _rounds(self) -> None:
        try:
            while True:
                interval = self._settings.get().probe_interval
                if interval <= 0:
                    await asyncio.sleep(1.0)
                    continue
                started = time.monotonic()
                await self.round()
                await asyncio.sleep(max(0.0, interval * random.uniform(0.8, 1.2) - (time.monotonic() - started)))  # noqa: S311
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def round(self) -> None:
        """Probe each target once, at most probe_rate a second and probe_concurrency at once."""
        view = self.mesh.get()
        # Before this site's own record is in the registry, every gateway refuses it ("not in the registry"):
        # probing then would only report false DOWNs (seen on an agent's restart) and steer traffic away.
        if not view.complete or self.site not in view.sites:
            return
        self._follow(view)
        s = self._settings.get()
        slots = asyncio.Semaphore(s.probe_concurrency)
        for key in list(self.states):
            await slots.acquire()
            task = asyncio.get_running_loop().create_task(self._probe_into(key, slots), name=f"probe-{key[0]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(1.0 / s.probe_rate)
        for _ in range(s.probe_concurrency):  # the round ends when its last probe has
            await slots.acquire()

    async def probe(self, site: str, gateway: Gateway) -> ProbeResult:
        """One probe of `gateway` of `site`: handshake (the peer must be a gateway of `site`), probe, close."""
        return await self._through(site, gateway, None)

    async def stream(self, site: str, gateway: Gateway, request: Request) -> ProbeResult:
        """Open a real stream through a fresh tunnel (the far gateway connects to an endpoint), then close it:
        ok when the gateway answered OK. `meshfed verify` runs one per imported service."""
        return await self._through(site, gateway, request)

    async def _through(self, site: str, gateway: Gateway, request: Request | None) -> ProbeResult:
        s = self._settings.get()
        key = (site, gateway.address, gateway.port)
        pool = TunnelPool(key, gateway, self.context, self.trust, self.mesh, 0, 1.0, s.handshake_timeout,
                          _no_spawn)
        start = time.perf_counter()
        tunnel = None
        handshake = None
        try:
            async with asyncio.timeout(s.handshake_timeout):
                tunnel = await pool.open()
            handshake = time.perf_counter() - start
            self._nonce = (self._nonce + 1) % (1 << 63)
            sent_wall, sent = self._clock(), time.perf_counter()
            async with asyncio.timeout(s.connect_timeout * (2 if request is not None else 1)):
                answer = await (tunnel.probe(self._nonce) if request is None else tunnel.request(request))
            rtt = time.perf_counter() - sent
            pool.remember_session(tunnel)  # offered for resumption, as the egress does
        except TimeoutError:
            if tunnel is None:
                return ProbeResult(False, f"no TCP connect and TLS handshake within {s.handshake_timeout:g}s",
                                   stage="connect", at=self._clock())
            return ProbeResult(False, f"no answer through the tunnel within {s.connect_timeout:g}s",
                               handshake, stage="answer", at=self._clock())
        except (OSError, RemoteProtocolError, PeerRejected) as exc:
            stage, reason = classify(exc, opened=tunnel is not None)
            return ProbeResult(False, reason, handshake, stage=stage, at=self._clock())
        finally:
            if tunnel is not None:  # after an OK the far gateway's stream ends unclean: the endpoint is reset
                tunnel.close()
        if isinstance(answer, ProbeAnswer):
            skew = answer.time_ms / 1000 - (sent_wall + rtt / 2)
            if answer.site != site:
                return ProbeResult(False, f"the gateway answered for site {answer.site}, not {site}",
                                   handshake, rtt, stage="identity", at=self._clock())
            return ProbeResult(True, "", handshake, rtt, skew, at=self._clock())
        if answer.status is Status.OK:
            return ProbeResult(True, "", handshake, rtt, at=self._clock())
        if request is None and answer.status is Status.BAD_REQUEST:  # a gateway from before probes: no clock
            return ProbeResult(True, "answers, but not probes (an older agent): no clock skew", handshake, rtt,
                               at=self._clock())
        return ProbeResult(False, f"the gateway answered {answer.status.name}: {answer.reason}", handshake, rtt,
                           stage="answer", at=self._clock())

    def document(self, keys: list[TargetKey]) -> list[dict[str, Any]]:
        """The /gateways entries of `keys` (in that order)."""
        now = self._clock()
        out = []
        for key in keys:
            state = self.states.get(key)
            if state is not None:
                g = state.gateway
                entry = state.describe(now, self.pools.get((state.site, g.address, g.port)),
                                       self.services.get(key, []))
                entry["serviceHealth"] = self.service_probes.describe(state.site)
                out.append(entry)
        return out

    def _follow(self, view: MeshView) -> None:
        """Targets follow the view (recomputed only when it changed)."""
        if view.generation == self._generation and self.states:
            return
        self._generation = view.generation
        targets = probe_targets(view, self.site)
        for key in [k for k in self.states if k not in targets]:
            del self.states[key]
            self._by_site.get(key[0], set()).discard(key)
            if not self._by_site.get(key[0], True):
                del self._by_site[key[0]]
            with contextlib.suppress(KeyError):
                self.metrics.alive.remove(*key)
        for key, (site, gateway, services) in targets.items():
            state = self.states.get(key)
            if state is None or state.gateway != gateway:
                self.states[key] = GatewayState(site, gateway)
                self._by_site.setdefault(site, set()).add(key)
            self.services[key] = services
        for key in [k for k in self.services if k not in targets]:
            del self.services[key]

    async def _probe_into(self, key: TargetKey, slots: asyncio.Semaphore) -> None:
        try:
            state = self.states.get(key)
            if state is None:
                return
            result = await self.probe(state.site, state.gateway)
            if self.states.get(key) is not state:
                return  # the target left or changed while probed
            was = state.alive
            state.record(result)
            if self.reach is not None:
                if result.ok:
                    self.reach.succeeded(state.site, state.gateway.name)
                elif not any(self.states[k].alive for k in self._by_site.get(state.site, ()) if k in self.states):
                    self.reach.failed(state.site)  # every gateway of the site is down
            self.metrics.alive.labels(*key).set(1 if result.ok else 0)
            if result.ok and result.rtt is not None:
                self.metrics.latency.labels(key[0]).observe(result.rtt)
            if was is not result.ok:
                level = logging.INFO if result.ok else logging.WARNING
                log.log(level, "gateway %s of site %s (%s:%d) is %s%s", key[1], key[0], state.gateway.address,
                        state.gateway.port, "ALIVE" if result.ok else "DOWN",
                        f": {result.reason}" if result.reason else "")
        finally:
            slots.release()


def classify(exc: BaseException, opened: bool) -> tuple[str, str]:
    """Where a handshake or probe failed (a ProbeResult stage) and why, in an operator's words."""
    if isinstance(exc, ConnectionRefusedError):
        return "connect", "connection refused (no gateway listening there)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls", f"TLS: the gateway's certificate does not verify: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS: {exc.reason or exc}"
    if isinstance(exc, PeerRejected):
        return "identity", f"identity: {exc}"
    if isinstance(exc, RemoteProtocolError):
        return "answer", f"preamble: {exc}"
    if isinstance(exc, ConnectionResetError) and opened:
        # TLS 1.3: the server checks our certificate after our handshake finished; its refusal shows here.
        return "answer", f"the gateway closed the tunnel before answering (did it refuse our certificate?): {exc}"
    return ("answer" if opened else "connect"), f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _no_spawn(coro: Any, name: str = "") -> None:  # a probe's pool never refills
    coro.close()

