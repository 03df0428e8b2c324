"""The etcd adapter: the only module that imports the etcd client (`aetcd`) and gRPC.

Thin and typed: it adds TLS with client certificates (aetcd only opens plaintext channels), maps every
client error to `RegistryUnavailable`, and exposes just the operations meshfed needs. It also holds the
one failover policy every registry user shares: a call that fails moves the client to the next member at
once (reads and idempotent writes are tried again there, within the call's timeout), and every call says
it needs a leader (`hasleader`), so a member cut off from the majority refuses at once instead of
answering late or watching a frozen past.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rtypes
import grpc
import grpc.aio

from federation.core.errors import RegistryUnavailable
from federation.registry.link import (
    KV,
    MAX_TXN_OPS,
    Absent,
    Compacted,
    Delete,
    Link,
    Put,
    Unchanged,
    WatchEvent,
    prefix_end,
    reconnecting,
)
from federation.runtime.files import TlsFiles

__all__ = ["KV", "MAX_TXN_OPS", "Absent", "Compacted", "Delete", "EtcdClient", "Put", "Unchanged", "WatchEvent",
           "reconnecting"]

T = TypeVar("T")

# Keepalive pings find a silent etcd (a partition) on an otherwise idle watch. etcd rejects pings more
# often than every 5 s (--grpc-keepalive-min-time), so 10 s it is.
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 2_000,
}

_CLOSE_TIMEOUT = 2.0
"""Seconds a close or watch cancel may take before the channel is dropped the hard way."""

REQUIRE_LEADER = (("hasleader", "true"),)
"""etcd's require-leader metadata (clientv3.WithRequireLeader): a member without a leader refuses the call
(and ends such a watch) instead of serving a minority's view."""

_CALLER_ERRORS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
})
"""Codes that say the request, not the member, is at fault: another member would answer the same."""


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client, over TLS with a client certificate when `tls` is given, every call requiring a leader."""

    def __init__(self, host: str, port: int, tls: TlsFiles | None, **kwargs: Any) -> None:
        super().__init__(host=host, port=port, **kwargs)
        self._tls = tls

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        if self._tls is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self._tls.ca.read_bytes(),
                private_key=self._tls.key.read_bytes(),
                certificate_chain=self._tls.cert.read_bytes(),
            )
            self.channel = grpc.aio.secure_channel(target, creds, options=self._options.items())
        else:
            self.channel = grpc.aio.insecure_channel(target, options=self._options.items())
        self.metadata = REQUIRE_LEADER
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


class EtcdClient:
    """The registry's view of etcd: get, list, transactions, leases, watches, all typed, failing over.

    One channel to one member at a time. A call that fails for a reason another member might not share
    (unreachable, no leader, timed out) moves the client to the next member listed; reads and
    idempotent writes are then tried there within what is left of the call's timeout. `link` says how
    the client is doing, for readiness, status and metrics.
    """

    def __init__(self, endpoints: Sequence[str], tls: TlsFiles | None = None, timeout: float = 5.0,
                 name: str = "registry") -> None:
        if not endpoints:
            raise ValueError("EtcdClient needs at least one endpoint")
        self.endpoints = tuple(endpoints)
        self._tls = tls
        self._timeout = timeout
        self._index = 0
        self._generation = 0
        self._client: Any = None
        self.link = Link(name, self.endpoints[0])
        """This client's health: the member in use, whether the last call worked, failovers."""

    @property
    def timeout(self) -> float:
        """Seconds each call may take."""
        return self._timeout

    @property
    def tls(self) -> TlsFiles | None:
        """The client TLS files (None: plaintext)."""
        return self._tls

    @property
    def endpoint(self) -> str:
        """The member calls go to now."""
        return self.endpoints[self._index % len(self.endpoints)]

    @property
    def generation(self) -> int:
        """Grows by one every time the client moves to another member."""
        return self._generation

    async def connect(self) -> None:
        """Open a channel to the current endpoint (gRPC connects lazily; calls fail over on error)."""
        if self._client is not None:
            return
        host, _, port = self.endpoint.rpartition(":")
        client = _Client(host.strip("[]"), int(port), self._tls, timeout=self._timeout, options=_CHANNEL_OPTIONS)
        await client.connect()
        self._client = client

    async def close(self) -> None:
        """Close the channel within a bounded time; safe to call twice."""
        client, self._client = self._client, None
        await _close(client)

    async def fail_over(self, generation: int, reason: str) -> None:
        """Move to the next member, unless the client already moved since `generation` (a call failed on
        the channel the caller used; another call may have noticed first)."""
        if generation != self._generation:
            return
        self._generation += 1
        self._index += 1
        self.link.failed(reason)
        if len(self.endpoints) > 1:
            self.link.failovers += 1
        self.link.endpoint = self.endpoint
        await self.close()

    async def reset(self) -> None:
        """Drop the channel and move to the next endpoint now (tools; calls do this on their own)."""
        await self.fail_over(self._generation, "reset")

    async def __aenter__(self) -> EtcdClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reads (tried on the next member after a failure, within the timeout)

    async def get(self, key: str) -> KV | None:
        """One key, or None."""
        got = await self._again(lambda c: c.get(key.encode()))
        return None if got is None else _kv(got)

    async def get_prefix(self, prefix: str, page: int = 1000) -> tuple[dict[str, KV], int]:
        """Every key under `prefix` at one revision, and that revision.

        Read in pages of at most `page` keys, each page pinned to the revision of the first, so no
        message grows with the mesh (etcd's and gRPC's limits stay far away) and the listing is one
        consistent snapshot. Raises Compacted if that revision is compacted away between pages.
        """
        start = prefix.encode()
        end = prefix_end(start)
        out: dict[str, KV] = {}
        revision = 0
        key = start
        while True:
            request = aetcd.rpc.RangeRequest(key=key, range_end=end, limit=page, revision=revision)

            def page_of(c: Any, r: Any = request) -> Awaitable[Any]:
                return c.kvstub.Range(r, timeout=self._timeout, metadata=c.metadata)  # type: ignore[no-any-return]

            resp = await self._again(page_of)
            if not revision:
                revision = int(resp.header.revision)
            for kv in resp.kvs:
                out[kv.key.decode()] = _kv(kv)
            if not resp.more or not resp.kvs:
                return out, revision
            key = bytes(resp.kvs[-1].key) + b"\0"

    async def revision(self) -> int:
        """The store's current revision (also a cheap liveness probe: it needs a leader)."""
        resp = await self._again(lambda c: c.get_prefix(b"\0meshfed-probe", keys_only=True))
        return int(resp.header.revision)

    # -- writes

    async def commit(self, ops: Sequence[Put | Delete], guard: tuple[str, int] | None = None) -> bool:
        """Apply ops in as few transactions as etcd allows (each batch atomic, sent again to the next member
        after a failure). With `guard` (key, mod revision; 0: absent), the first batch applies only if that
        key was last written at that revision: False, and nothing written, when it was not. A guarded batch
        is not sent again (it may have been applied, and then its guard fails): the caller tries again."""
        for start in range(0, len(ops), MAX_TXN_OPS):
            batch = ops[start : start + MAX_TXN_OPS]
            compared = guard if start == 0 else None

            def txn(c: Any, batch: Sequence[Put | Delete] = batch, compared: tuple[str, int] | None = compared
                    ) -> Awaitable[Any]:
                t = c.transactions
                reqs = [t.put(op.key.encode(), op.value, lease=op.lease or None) if isinstance(op, Put)
                        else t.delete(op.key.encode()) for op in batch]
                compare = [] if compared is None else [t.mod(compared[0].encode()) == compared[1]]
                return c.transaction(compare=compare, success=reqs, failure=[])  # type: ignore[no-any-return]

            if compared is None:
                await self._again(txn)
                continue
            async with self._call() as c:
                ok, _ = await txn(c)
            if not ok:
                return False
        return True

    async def commit_if(self, conditions: Sequence[Absent | Unchanged], ops: Sequence[Put | Delete]) -> bool:
        """Apply `ops` in one transaction if every condition holds; True if they were applied.

        Conditions and ops each count against etcd's --max-txn-ops (default 128). Not sent again after a
        failure (it may have been applied): the caller reads and plans again.
        """
        async with self._call() as c:
            t = c.transactions
            compare = [t.version(k.key.encode()) == 0 if isinstance(k, Absent)
                       else t.mod(k.key.encode()) == k.mod_revision for k in conditions]
            success = [t.put(op.key.encode(), op.value, lease=op.lease or None) if isinstance(op, Put)
                       else t.delete(op.key.encode()) for op in ops]
            ok, _ = await c.transaction(compare=compare, success=success, failure=[])
        return bool(ok)

    async def put_if_absent(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Create `key` only if it does not exist; True if this call created it."""
        async with self._call() as c:
            t = c.transactions
            ok, _ = await c.transaction(compare=[t.version(key.encode()) == 0],
                                        success=[t.put(key.encode(), value, lease=lease or None)], failure=[])
        return bool(ok)

    async def replace(self, key: str, old: bytes, new: bytes) -> bool:
        """Set `key` to `new` only if it holds `old`; True on success."""
        async with self._call() as c:
            t = c.transactions
            ok, _ = await c.transaction(compare=[t.value(key.encode()) == old], success=[t.put(key.encode(), new)],
                                        failure=[])
        return bool(ok)

    async def delete_if(self, key: str, value: bytes) -> bool:
        """Delete `key` only if it holds `value`; True on success."""
        async with self._call() as c:
            t = c.transactions
            ok, _ = await c.transaction(compare=[t.value(key.encode()) == value], success=[t.delete(key.encode())],
                                        failure=[])
        return bool(ok)

    async def compact(self, revision: int) -> None:
        """Compact history up to `revision` (operators and tests)."""
        async with self._call() as c:
            await c.compact(revision, physical=True)

    # -- leases

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        async with self._call() as c:
            lease = await c.lease(ttl)
        return int(lease.id)

    async def keepalive(self, lease: int) -> int:
        """Refresh `lease`; the TTL left after refreshing, 0 if the lease no longer exists."""
        reply = await self._again(lambda c: c.refresh_lease(lease))
        return 0 if reply is None else max(int(reply.TTL), 0)

    async def revoke(self, lease: int) -> None:
        """Revoke `lease`, deleting every key bound to it."""
        async with self._call() as c:
            await c.revoke_lease(lease)

    # -- watches

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under `prefix` from `start_revision` on; raises Compacted or RegistryUnavailable."""
        start = prefix.encode()
        end = prefix_end(start)
        async with self._call() as c:
            watch = await c.watch(start, range_end=end, start_revision=start_revision)
        try:
            async with self._call() as c:
                async for event in watch:
                    kv = event.kv
                    value = None if event.kind == aetcd.rtypes.EventKind.DELETE else bytes(kv.value)
                    yield WatchEvent(kv.key.decode(), value, int(kv.mod_revision))
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await asyncio.shield(watch.cancel())

    # -- private

    async def _again(self, call: Callable[[Any], Awaitable[T]]) -> T:
        """`call(client)`, tried on the next member after a failure while the timeout lasts (one try per member)."""
        deadline = time.monotonic() + self._timeout
        for attempt in range(len(self.endpoints)):
            try:
                async with self._call() as c:
                    return await call(c)
            except Compacted:
                raise
            except RegistryUnavailable:
                if attempt == len(self.endpoints) - 1 or time.monotonic() >= deadline:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[Any]:
        """The aetcd client of the current member for one call; a failure moves the client to the next."""
        generation = self._generation
        endpoint = self.endpoint
        try:
            if self._client is None:
                await self.connect()
            yield self._client
        except aetcd.exceptions.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from exc
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.OUT_OF_RANGE and "compacted" in str(exc.details()):
                raise Compacted(0) from exc  # a paged listing's revision was compacted: list again
            reason = f"etcd at {endpoint}: {exc.code().name}: {exc.details()}"
            if exc.code() in _CALLER_ERRORS:
                raise RegistryUnavailable(reason) from exc
            await self.fail_over(generation, reason)
            raise RegistryUnavailable(reason) from exc
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
            reason = f"etcd at {endpoint}: {exc or type(exc).__name__}"
            if isinstance(exc, aetcd.exceptions.InvalidArgumentError | aetcd.exceptions.UnauthenticatedError
                          | aetcd.exceptions.PreconditionFailedError):
                raise RegistryUnavailable(reason) from exc
            await self.fail_over(generation, reason)
            raise RegistryUnavailable(reason) from exc
        else:
            if generation == self._generation:
                self.link.ok()


async def _close(client: Any) -> None:
    """Close an aetcd client within a bounded time.

    aetcd's own close can wait forever on its watcher's bounded request queue when the stream stalled
    (a silent etcd), so after `_CLOSE_TIMEOUT` the gRPC channel is closed directly.
    """
    if client is None:
        return
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await client.close()
    except Exception:
        channel = getattr(client, "channel", None)
        if channel is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await channel.close(None)


def _kv(kv: Any) -> KV:
    return KV(bytes(kv.value), int(kv.lease), int(kv.create_revision), int(kv.mod_revision))
