"""What the scale benchmark measures on the observer agent from outside: DNS answers, /proc, admin documents.

Every loop here has a count and a time bound; every query budget is stated where it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype

from federation.core.keys import Keys
from federation.registry.etcd import EtcdClient
from tests.bench import scalemesh as mesh
from tests.dnshelp import ZONE

VIP_PREFIX = Keys().mesh("vips", "services") + "/"
"""Where the VIP allocator keeps one key per allocated service (<prefix><namespace>/<name>)."""
QUERY_TIMEOUT = 1.0
"""A DNS poll that has no answer within a second is sent again later (the agent may be busy)."""


async def answers(host: str, port: int, name: str, timeout: float = QUERY_TIMEOUT) -> set[str]:
    """The A addresses the agent answers for `name` now (empty on NODATA, SERVFAIL or no answer).

    Asks as a stub resolver does: EDNS with a 1232-byte buffer, and again over TCP when the answer was
    truncated (a headless service exported by many sites has more addresses than one datagram holds).
    """
    q = dns.message.make_query(name, dns.rdatatype.A, use_edns=0, payload=1232)
    try:
        r, _ = await dns.asyncquery.udp_with_fallback(q, host, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError, EOFError):
        return set()
    return {rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset}


async def sweep(host: str, port: int, names: list[str], deadline: float, rate: float = 1000.0,
                in_flight: int = 32, pause: float = 0.2) -> tuple[float | None, int]:
    """Query every name until each has had an A answer once, at most `rate` queries/s, until `deadline`.

    Returns (time.monotonic() when the last name first answered, or None; names never answered).
    """
    pending = set(names)
    last: float | None = None
    gate = asyncio.Semaphore(in_flight)

    async def one(name: str) -> None:
        nonlocal last
        async with gate:
            if await answers(host, port, name):
                pending.discard(name)
                last = time.monotonic()

    while pending and time.monotonic() < deadline:
        batch: list[asyncio.Task[None]] = []
        started = time.monotonic()
        for n, name in enumerate(sorted(pending)):
            if time.monotonic() > deadline:
                break
            batch.append(asyncio.create_task(one(name)))
            ahead = started + (n + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*batch)
        if pending:
            await asyncio.sleep(pause)
    return (last if not pending else None), len(pending)


@dataclass(slots=True)
class _Pending:
    name: str
    address: str
    committed: float
    due: float
    polls: int = 0


class Propagation:
    """Polls the agent's DNS until each change's address shows in its answer; records when it first did.

    A change is polled first right after its commit is reported, then every 10% of its age so far (at
    least 10 ms, at most 5 s), within a budget of `rate` queries/s shared by all pending changes; so a
    lag is measured to within about a tenth of itself (and 10 ms). A change not seen within `give_up`
    seconds is left as never seen.
    """

    def __init__(self, host: str, port: int, rate: float = 800.0, give_up: float = 120.0) -> None:
        self.host = host
        self.port = port
        self.rate = rate
        self.give_up = give_up
        self.pending: dict[int, _Pending] = {}
        self.committed: dict[int, float] = {}
        self.seen: dict[int, float] = {}
        self.queries = 0
        self._gate = asyncio.Semaphore(32)
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, change: int, name: str, address: str, committed: float) -> None:
        self.committed[change] = committed
        self.pending[change] = _Pending(name, address, committed, time.monotonic())

    async def run(self) -> None:
        """Poll until cancelled."""
        tick = 0.005
        per_tick = max(1, int(self.rate * tick))
        while True:
            now = time.monotonic()
            for change, p in list(self.pending.items()):
                if now - p.committed > self.give_up:
                    del self.pending[change]
            due = sorted((p.due, c) for c, p in self.pending.items() if p.due <= now)[:per_tick]
            for _, change in due:
                p = self.pending[change]
                p.due = float("inf")  # in flight
                task = asyncio.create_task(self._poll(change, p))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(tick)

    async def settle(self, bound: float) -> None:
        """Wait until nothing is pending, at most `bound` seconds."""
        deadline = time.monotonic() + bound
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def lags(self, changes: list[int]) -> list[float]:
        """Commit-to-answer lag of each change (inf: never seen)."""
        return [self.seen[c] - self.committed[c] if c in self.seen else float("inf") for c in changes]

    async def _poll(self, change: int, p: _Pending) -> None:
        async with self._gate:
            self.queries += 1
            p.polls += 1
            got = await answers(self.host, self.port, p.name)
        now = time.monotonic()
        if p.address in got:
            self.seen.setdefault(change, now)
            self.pending.pop(change, None)
            return
        p.due = now + min(5.0, max(0.01, 0.1 * (now - p.committed)))


async def settle(pid: int, bound: float = 120.0, quiet: float = 0.2) -> str:
    """Wait until process `pid` is idle: under `quiet` of a core for 3 consecutive seconds (at most `bound`)."""
    started, calm = time.monotonic(), 0
    used = cpu_seconds(pid)
    while time.monotonic() - started < bound:
        await asyncio.sleep(1)
        now = cpu_seconds(pid)
        calm, used = (calm + 1 if now - used < quiet else 0), now
        if calm >= 3:
            return (f"idle reference taken once the agent was quiet (< {quiet:.0%} CPU for 3 s), "
                    f"{time.monotonic() - started:.0f}s after the sync")
    return f"the agent never went quiet (< {quiet:.0%} CPU for 3 s) in {bound:.0f}s: the idle reference is not idle"


async def vips_answered(endpoint: str, dns_port: int, shape: mesh.Shape, deadline: float, bound: float,
                        prefix: str = VIP_PREFIX) -> tuple[float | None, str]:
    """When the last VIPs are answered in DNS: wait (polling etcd, 4/s: no load on the agent) until every
    ClusterSetIP service has its allocation, then poll the names of the 20 allocated last (highest
    revision) until each has an A answer; (that moment, what was measured)."""
    target = sum(1 for k in range(shape.services) if not mesh.is_headless(k)) + 1  # and the tunnel's echo
    async with EtcdClient([endpoint]) as client:
        while True:
            kvs, _ = await client.get_prefix(prefix)
            if len(kvs) >= target:
                break
            if time.monotonic() > deadline:
                hint = "" if kvs else f" (none under {prefix}: if allocations are stored elsewhere, set --vip-prefix)"
                return None, f"{len(kvs)} of {target} VIPs allocated in {bound:.0f}s{hint}"
            await asyncio.sleep(0.25)
    newest = sorted(kvs.items(), key=lambda kv: kv[1].mod_revision)[-20:]
    names = [mesh.dns_name(*key[len(prefix):].split("/", 1), zone=ZONE) for key, _ in newest]
    last, missing = await sweep("127.0.0.1", dns_port, names, deadline, pause=0.02)
    if last is None:
        return None, f"all {target} VIPs allocated, but {missing} of the last 20 not answered in DNS in time"
    return last, f"all {target} VIPs allocated; the 20 allocated last answered in DNS"


# ---------------------------------------------------------------- /proc


def status_kib(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sockets(pid: int) -> dict[str, int]:
    """The process's sockets by kind: TCP listening, UDP bound, TCP established, all descriptors."""
    inodes: set[str] = set()
    fds = 0
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            fds += 1
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    counts = {"tcp_listen": 0, "udp": 0, "tcp_established": 0, "fds": fds}
    for table, kind in (("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp")):
        with contextlib.suppress(FileNotFoundError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = row.split()
                if len(cols) < 10 or cols[9] not in inodes:
                    continue
                if kind == "udp":
                    counts["udp"] += 1
                elif cols[3] == "0A":
                    counts["tcp_listen"] += 1
                elif cols[3] == "01":
                    counts["tcp_established"] += 1
    return counts


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------- admin


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int
    seconds: float
    size: int
    body: bytes


def fetch(url: str, timeout: float) -> Fetched:
    """GET `url`; the status, the time to the last byte, the size."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    except (urllib.error.URLError, OSError) as exc:
        return Fetched(0, time.perf_counter() - started, 0, repr(exc).encode())
    return Fetched(status, time.perf_counter() - started, len(body), body)
