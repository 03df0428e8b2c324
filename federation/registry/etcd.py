"""The etcd adapter: the only module that imports the etcd client (`aetcd`).

Thin and typed: it adds TLS with client certificates (aetcd only opens plaintext channels), maps every
client error to `RegistryUnavailable`, and exposes just the operations meshfed needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.rtypes
import grpc
import grpc.aio

from federation.core.errors import RegistryUnavailable
from federation.runtime.files import TlsFiles

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

MAX_TXN_OPS = 100
"""etcd refuses transactions with more than --max-txn-ops (default 128) operations."""


@dataclass(frozen=True, slots=True)
class KV:
    """One stored key/value with the metadata meshfed uses."""

    value: bytes
    lease: int = 0
    create_revision: int = 0
    mod_revision: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A put (value set) or a delete (value None) of `key` at `revision`."""

    key: str
    value: bytes | None
    revision: int


class Compacted(RegistryUnavailable):
    """The revision asked for has been compacted away: list again."""

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"revision compacted below {compacted_revision}")
        self.compacted_revision = compacted_revision


@dataclass(frozen=True, slots=True)
class Put:
    """Transaction op: put `value` at `key`, bound to `lease` (0: none)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Transaction op: delete `key`."""

    key: str


@dataclass(frozen=True, slots=True)
class Absent:
    """Transaction condition: `key` does not exist."""

    key: str


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Transaction condition: `key` was last written at `mod_revision` (it exists and nobody changed it since)."""

    key: str
    mod_revision: int


class _TLSClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client over a TLS channel with a client certificate."""

    def __init__(self, host: str, port: int, tls: TlsFiles, **kwargs: Any) -> None:
        super().__init__(host=host, port=port, **kwargs)
        self._tls = tls

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        creds = grpc.ssl_channel_credentials(
            root_certificates=self._tls.ca.read_bytes(),
            private_key=self._tls.key.read_bytes(),
            certificate_chain=self._tls.cert.read_bytes(),
        )
        self.channel = grpc.aio.secure_channel(f"{self._host}:{self._port}", creds, options=self._options.items())
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


class EtcdClient:
    """The registry's view of etcd: get, list, transactions, leases, watches, all typed."""

    def __init__(self, endpoints: Sequence[str], tls: TlsFiles | None = None, timeout: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("EtcdClient needs at least one endpoint")
        self.endpoints = tuple(endpoints)
        self._tls = tls
        self._timeout = timeout
        self._index = 0
        self._client: Any = None

    @property
    def timeout(self) -> float:
        """Seconds each call may take."""
        return self._timeout

    async def connect(self) -> None:
        """Open a channel to the current endpoint (gRPC connects lazily; calls fail over on error)."""
        if self._client is not None:
            return
        host, _, port = self.endpoints[self._index % len(self.endpoints)].rpartition(":")
        host = host.strip("[]")
        kwargs: dict[str, Any] = {"timeout": self._timeout, "options": _CHANNEL_OPTIONS}
        if self._tls is not None:
            self._client = _TLSClient(host, int(port), self._tls, **kwargs)
        else:
            self._client = aetcd.Client(host=host, port=int(port), **kwargs)
        await self._client.connect()

    async def close(self) -> None:
        """Close the channel within a bounded time; safe to call twice.

        aetcd's own close can wait forever on its watcher's bounded request queue when the stream
        stalled (a silent etcd), so after `_CLOSE_TIMEOUT` the gRPC channel is closed directly.
        """
        client, self._client = self._client, None
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

    async def reset(self) -> None:
        """Drop the channel and move to the next endpoint (after an error)."""
        await self.close()
        self._index += 1

    async def __aenter__(self) -> EtcdClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reads

    async def get(self, key: str) -> KV | None:
        """One key, or None."""
        async with self._errors():
            got = await self._client.get(key.encode())
        return None if got is None else _kv(got)

    async def get_prefix(self, prefix: str, page: int = 1000) -> tuple[dict[str, KV], int]:
        """Every key under `prefix` at one revision, and that revision.

        Read in pages of at most `page` keys, each page pinned to the revision of the first, so no
        message grows with the mesh (etcd's and gRPC's limits stay far away) and the listing is one
        consistent snapshot. Raises Compacted if that revision is compacted away between pages.
        """
        start = prefix.encode()
        end = _prefix_end(start)
        out: dict[str, KV] = {}
        revision = 0
        key = start
        while True:
            request = aetcd.rpc.RangeRequest(key=key, range_end=end, limit=page, revision=revision)
            async with self._errors():
                resp = await self._client.kvstub.Range(request, timeout=self._timeout, metadata=self._client.metadata)
            if not revision:
                revision = int(resp.header.revision)
            for kv in resp.kvs:
                out[kv.key.decode()] = _kv(kv)
            if not resp.more or not resp.kvs:
                return out, revision
            key = bytes(resp.kvs[-1].key) + b"\0"

    async def revision(self) -> int:
        """The store's current revision (also a cheap liveness probe)."""
        async with self._errors():
            resp = await self._client.get_prefix(b"\0meshfed-probe", keys_only=True)
        return int(resp.header.revision)

    # -- writes

    async def commit(self, ops: Sequence[Put | Delete], guard: tuple[str, int] | None = None) -> bool:
        """Apply ops in as few transactions as etcd allows (each batch is atomic).

        With `guard` (key, mod revision), the first batch applies only if that key was last written at
        that revision (0: it does not exist); False, and nothing written, when it was not."""
        await self._connected()
        for start in range(0, len(ops), MAX_TXN_OPS):
            batch = ops[start : start + MAX_TXN_OPS]
            t = self._client.transactions
            reqs = [
                t.put(op.key.encode(), op.value, lease=op.lease or None) if isinstance(op, Put)
                else t.delete(op.key.encode())
                for op in batch
            ]
            compare = [t.mod(guard[0].encode()) == guard[1]] if guard is not None and start == 0 else []
            async with self._errors():
                ok, _ = await self._client.transaction(compare=compare, success=reqs, failure=[])
            if compare and not ok:
                return False
        return True

    async def commit_if(self, conditions: Sequence[Absent | Unchanged], ops: Sequence[Put | Delete]) -> bool:
        """Apply `ops` in one transaction if every condition holds; True if they were applied.

        Conditions and ops each count against etcd's --max-txn-ops (default 128).
        """
        await self._connected()
        t = self._client.transactions
        compare = [t.version(c.key.encode()) == 0 if isinstance(c, Absent) else t.mod(c.key.encode()) == c.mod_revision
                   for c in conditions]
        success = [t.put(op.key.encode(), op.value, lease=op.lease or None) if isinstance(op, Put)
                   else t.delete(op.key.encode()) for op in ops]
        async with self._errors():
            ok, _ = await self._client.transaction(compare=compare, success=success, failure=[])
        return bool(ok)

    async def put_if_absent(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Create `key` only if it does not exist; True if this call created it."""
        await self._connected()
        t = self._client.transactions
        async with self._errors():
            ok, _ = await self._client.transaction(
                compare=[t.version(key.encode()) == 0],
                success=[t.put(key.encode(), value, lease=lease or None)],
                failure=[],
            )
        return bool(ok)

    async def replace(self, key: str, old: bytes, new: bytes) -> bool:
        """Set `key` to `new` only if it holds `old`; True on success."""
        await self._connected()
        t = self._client.transactions
        async with self._errors():
            ok, _ = await self._client.transaction(
                compare=[t.value(key.encode()) == old], success=[t.put(key.encode(), new)], failure=[]
            )
        return bool(ok)

    async def delete_if(self, key: str, value: bytes) -> bool:
        """Delete `key` only if it holds `value`; True on success."""
        await self._connected()
        t = self._client.transactions
        async with self._errors():
            ok, _ = await self._client.transaction(
                compare=[t.value(key.encode()) == value], success=[t.delete(key.encode())], failure=[]
            )
        return bool(ok)

    async def compact(self, revision: int) -> None:
        """Compact history up to `revision` (operators and tests)."""
        async with self._errors():
            await self._client.compact(revision, physical=True)

    # -- leases

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        async with self._errors():
            lease = await self._client.lease(ttl)
        return int(lease.id)

    async def keepalive(self, lease: int) -> int:
        """Refresh `lease`; the TTL left after refreshing, 0 if the lease no longer exists."""
        async with self._errors():
            reply = await self._client.refresh_lease(lease)
        return 0 if reply is None else max(int(reply.TTL), 0)

    async def revoke(self, lease: int) -> None:
        """Revoke `lease`, deleting every key bound to it."""
        async with self._errors():
            await self._client.revoke_lease(lease)

    # -- watches

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under `prefix` from `start_revision` on; raises Compacted or RegistryUnavailable."""
        start = prefix.encode()
        end = _prefix_end(start)
        async with self._errors():
            watch = await self._client.watch(start, range_end=end, start_revision=start_revision)
        try:
            async with self._errors():
                async for event in watch:
                    kv = event.kv
                    value = None if event.kind == aetcd.rtypes.EventKind.DELETE else bytes(kv.value)
                    yield WatchEvent(kv.key.decode(), value, int(kv.mod_revision))
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await asyncio.shield(watch.cancel())

    async def _connected(self) -> None:
        async with self._errors():
            await self.connect()

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            if self._client is None:
                await self.connect()
            yield
        except aetcd.exceptions.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from exc
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.OUT_OF_RANGE and "compacted" in str(exc.details()):
                raise Compacted(0) from exc  # a paged listing's revision was compacted: list again
            raise RegistryUnavailable(f"etcd at {self.endpoints[self._index % len(self.endpoints)]}: {exc}") from exc
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
            raise RegistryUnavailable(f"etcd at {self.endpoints[self._index % len(self.endpoints)]}: {exc}") from exc


async def reconnecting(client: EtcdClient, session: Callable[[], Awaitable[None]],
                       on_error: Callable[[RegistryUnavailable], float]) -> None:
    """Run `session` again and again until cancelled: after each RegistryUnavailable, `on_error` says
    how long to wait, the channel is dropped and the next endpoint tried. The client is closed at the end."""
    try:
        while True:
            try:
                await session()
            except RegistryUnavailable as exc:
                delay = on_error(exc)
                await client.reset()
                await asyncio.sleep(delay)
    finally:
        await asyncio.shield(client.close())


def _kv(kv: Any) -> KV:
    return KV(bytes(kv.value), int(kv.lease), int(kv.create_revision), int(kv.mod_revision))


def _prefix_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with `prefix`."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"
