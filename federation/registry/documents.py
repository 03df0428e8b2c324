"""Mesh documents in etcd as the operator's commands write them: read, then replace only if unchanged.

Two operators (or one, twice) changing the revocation list or the trust bundle at once must not lose
each other's change, so every write is a compare-and-swap against the bytes read. The signing itself is
the caller's (the CLI holds the operator or root key).
"""

from __future__ import annotations

from dataclasses import dataclass

from federation.core.keys import Keys
from federation.registry.etcd import EtcdClient


@dataclass(frozen=True, slots=True)
class Stored:
    """What a key holds (None: nothing) and its revision."""

    key: str
    value: bytes | None
    revision: int = 0


class DocumentStore:
    """Read and compare-and-swap mesh documents and list the records under a prefix."""

    def __init__(self, client: EtcdClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    async def read(self, key: str) -> Stored:
        """The value at `key`."""
        kv = await self.client.get(key)
        return Stored(key, None if kv is None else kv.value, 0 if kv is None else kv.mod_revision)

    async def swap(self, old: Stored, value: bytes) -> bool:
        """Write `value` if the key still holds what `old` read; False if someone changed it meanwhile."""
        if old.value is None:
            return await self.client.put_if_absent(old.key, value)
        return await self.client.replace(old.key, old.value, value)

    async def under(self, prefix: str) -> list[Stored]:
        """Every key under `prefix`, sorted."""
        kvs, _ = await self.client.get_prefix(prefix)
        return [Stored(k, v.value, v.mod_revision) for k, v in sorted(kvs.items())]
