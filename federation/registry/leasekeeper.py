"""The lease keepalive on a thread of its own, with a small gRPC channel of its own.

The agent's site records live as long as its lease, and the lease lives as long as keepalives reach
etcd within its TTL. On the event loop they wait behind whatever the loop is doing: 5,000 relayed
connections renewed every 10 s saturated both cores, the keepalive came late, the lease expired and
every other site refused the agent's tunnels (issue 17). Here the keepalive runs on a plain thread with
the blocking gRPC API, which waits without the GIL; the loop only hears when the lease is lost.

The same failover policy as `federation.registry.etcd.EtcdClient`: the next member after an error, every
call requiring a leader, retries a little after each failure (well within the TTL). While keepalives
fail, `remaining()` falls; once less than half the TTL is left the keeper logs a warning (once a second
at most), so an operator hears of a lease in danger before the site is withdrawn.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import aetcd.rpc
import grpc

from federation.registry.link import Link
from federation.runtime.files import TlsFiles

log = logging.getLogger(__name__)

_OPTIONS = (("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.max_reconnect_backoff_ms", 1_000))
_REQUIRE_LEADER = (("hasleader", "true"),)


class LeaseKeeper:
    """Refreshes one lease every `interval` seconds from its own thread; `on_lost` (called on the thread)
    hears when etcd says the lease is gone."""

    def __init__(self, endpoints: Sequence[str], tls: TlsFiles | None = None, timeout: float = 5.0,
                 link: Link | None = None) -> None:
        self.endpoints = tuple(endpoints)
        self._tls = tls
        self._timeout = timeout
        self.link = link or Link("lease", self.endpoints[0])
        self._index = 0
        self._lease = 0
        self._ttl = 0
        self._interval = 1.0
        self._on_lost: Callable[[int], None] | None = None
        self._on_failing: Callable[[str], None] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._channel: grpc.Channel | None = None
        self._last_ok = 0.0
        self._ttl_left = 0
        self._warned = 0.0
        self.rtt = 0.0
        """Seconds the last keepalive took."""
        self.failures = 0
        """Keepalives that failed since start."""

    def keep(self, lease: int, ttl: int, ttl_left: int, on_lost: Callable[[int], None],
             on_failing: Callable[[str], None] | None = None) -> None:
        """Keep `lease` (of `ttl` seconds, `ttl_left` of them left now) alive from now on; `on_lost(lease)`
        when etcd says it is gone, `on_failing(reason)` after each keepalive that failed (both called on the
        keeper's thread)."""
        self._lease, self._ttl, self._on_lost, self._on_failing = lease, ttl, on_lost, on_failing
        self._interval = max(ttl / 3, 0.2)
        self._last_ok, self._ttl_left = time.monotonic(), ttl_left
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="meshfed-lease-keepalive", daemon=True)
            self._thread.start()
        self._wake.set()

    def drop(self) -> None:
        """Stop refreshing the current lease (it was lost, or revoked)."""
        self._lease = 0

    def stop(self, wait: bool = False) -> None:
        """End the thread (at once, or after its call under way when `wait`) and close its channel."""
        self._lease = 0
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and wait:
            thread.join(self._timeout + 1)

    def remaining(self, now: float | None = None) -> float:
        """Seconds the lease has left as far as we know (the TTL etcd gave at the last keepalive that worked,
        less the time since); 0 while no lease is kept."""
        if not self._lease:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, self._ttl_left - (now - self._last_ok))

    # -- the thread

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                lease = self._lease
                if not lease:
                    self._wake.wait()
                    self._wake.clear()
                    continue
                wait = self._interval
                try:
                    left = self._refresh(lease)
                except (grpc.RpcError, OSError) as exc:
                    wait = self._failed(exc)
                else:
                    if left <= 0 and lease == self._lease:
                        self._lease = 0
                        if self._on_lost is not None:
                            self._on_lost(lease)
                        continue
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            self._close()

    def _refresh(self, lease: int) -> int:
        stub = aetcd.rpc.LeaseStub(self._connect())
        started = time.monotonic()
        call: Any = stub.LeaseKeepAlive(iter([aetcd.rpc.LeaseKeepAliveRequest(ID=lease)]), timeout=self._timeout,
                                        metadata=_REQUIRE_LEADER)
        try:
            reply = next(call)
        except StopIteration:
            reply = None
        finally:
            call.cancel()
        now = time.monotonic()
        self.rtt = now - started
        self.link.ok()
        left = 0 if reply is None else max(int(reply.TTL), 0)
        if left > 0:
            self._last_ok, self._ttl_left = started, left
        return left

    def _failed(self, exc: grpc.RpcError | OSError) -> float:
        self.failures += 1
        endpoint = self.endpoints[self._index % len(self.endpoints)]
        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            self.link.failed(f"etcd at {endpoint}: {exc.code().name}: {exc.details()}")
        else:
            self.link.failed(f"etcd at {endpoint}: {exc}")
        if self._on_failing is not None:
            self._on_failing(self.link.error or "")
        self._index += 1
        if len(self.endpoints) > 1:
            self.link.failovers += 1
        self.link.endpoint = self.endpoints[self._index % len(self.endpoints)]
        self._close()
        left = self.remaining()
        now = time.monotonic()
        if left < self._ttl / 2 and now - self._warned >= 1.0:
            self._warned = now
            log.warning("registry lease %x expires in %.1fs unless etcd answers: keepalives failing (%s); "
                        "trying %s", self._lease, left, self.link.error, self.link.endpoint)
        # Soon again, on the next member, but never flooding it: a quorum coming back is seen at once.
        return min(self._interval, 0.2 + random.random() * 0.3)  # noqa: S311 - jitter, not secrets

    def _connect(self) -> grpc.Channel:
        if self._channel is None:
            target = self.endpoints[self._index % len(self.endpoints)]
            if self._tls is not None:
                creds = grpc.ssl_channel_credentials(root_certificates=self._tls.ca.read_bytes(),
                                                     private_key=self._tls.key.read_bytes(),
                                                     certificate_chain=self._tls.cert.read_bytes())
                self._channel = grpc.secure_channel(target, creds, options=_OPTIONS)
            else:
                self._channel = grpc.insecure_channel(target, options=_OPTIONS)
        return self._channel

    def _close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
