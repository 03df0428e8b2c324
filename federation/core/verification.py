"""What the registry's readers need from record verification, as protocols. Pure: no crypto here.

The catalog and the mirror cannot import `cryptography`; the agent builds the verifier
(`federation.pki.records.RecordVerifier`) and hands it to them. The catalog calls `check` on every
record it decodes; the mirror feeds it the mesh documents (trust bundle, revocations), tells it of
deletes, and re-applies the records it asks for again.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Mode(enum.StrEnum):
    """`registry.signatures`: what a reader does with a record that carries no signature."""

    ACCEPT = "accept"
    """Take unsigned records from sites that have never signed (a mesh being upgraded); a record that does
    carry a signature must still verify, and a site seen signing may no longer drop its signature."""
    REQUIRE = "require"
    """Take only records that verify: the setting once every agent signs."""


@dataclass(frozen=True, slots=True)
class Effect:
    """What a mesh document changed for the records already read."""

    drop_sites: frozenset[str] = frozenset()
    """Sites whose records must leave every view now (revoked)."""
    recheck: bool = False
    """Every record must be verified again (new roots, a site restored): list the registry again."""
    note: str = ""
    """What happened, for the log (empty: nothing)."""

    def __bool__(self) -> bool:
        """True when records already read are affected."""
        return bool(self.drop_sites or self.recheck)


class RecordCheck(Protocol):
    """Raise RecordError unless the record at `key` (`parsed` by `Keys.parse`) may be used."""

    def __call__(self, key: str, parsed: object, value: bytes) -> None: ...


class RegistryTrust(Protocol):
    """The verifier as the mirror uses it."""

    @property
    def check(self) -> RecordCheck:
        """What the catalog calls on every record it decodes."""
        ...

    def documents(self) -> Sequence[str]:
        """Keys of the mesh documents it reads (the mirror feeds them in before any record)."""
        ...

    def document(self, key: str, value: bytes | None) -> Effect:
        """Take a put (or a delete, value None) of a mesh document."""
        ...

    def deleted(self, key: str) -> None:
        """A record was deleted (its history may be forgotten)."""
        ...

    def retry(self, site: str) -> list[tuple[str, bytes, int]]:
        """Records of `site` held back for want of its signed site record, to apply again now that it came."""
        ...
