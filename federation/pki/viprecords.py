"""Verifying VIP allocations and claims (`mesh/vips/`): each is signed by the registry signer of the site whose
allocator wrote it, and verifies against that site's chain as its own site record lists it. Pure: time is given.

A VIP record names no site in its key, so its signer is found by key id among the signers of the site records
seen. One whose signer no site record seen lists yet (its site record comes later in a listing, or a renewed
signer signed before the site record naming it reached etcd) is held, bounded, and applied when a site record
names the signer; held longer than `HOLD_FOR` it is dropped. The signers of a site that left the registry are
kept for VIP records until they expire, so allocations outlive the site that made them while the allocators
that remain re-sign them (`RecordVerifier.resign_due`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509

from federation.core import envelope
from federation.core.errors import RecordError
from federation.core.verification import Mode
from federation.pki.signing import check_signature

MAX_HELD = 20_000
"""VIP records held for a signer not seen yet, mesh-wide: a bulk allocation of 5,000 services is 10,000."""
MAX_HELD_PER_KID = 12_000
"""...and per key id, so that records made up by a raw writer under one invented key cannot crowd out the rest."""
HOLD_FOR = dt.timedelta(minutes=5)
"""How long a held record waits for its signer's site record before it is dropped (a site record follows
its signer's first signature within seconds; a forged key id never comes)."""
MAX_RETIRED = 4096
"""Signers of departed sites kept for verifying the VIP records they signed (expired ones go first)."""

Entry = tuple[str, x509.Certificate, dt.datetime]
"""(site, signing certificate, notAfter)"""


@dataclass(frozen=True, slots=True)
class Held:
    """A VIP record waiting for its signer's site record."""

    value: bytes
    since: dt.datetime


class VipRecords:
    """The held VIP records and the signers of departed sites."""

    def __init__(self) -> None:
        self._held: dict[str, dict[str, Held]] = {}
        """kid -> key -> the record held for it"""
        self._count = 0
        self._where: dict[str, str] = {}
        """key -> the kid it is held under"""
        self._retired: dict[str, Entry] = {}
        """kid -> what verified it when its site left the registry"""

    def check(self, key: str, value: bytes, *, signer: Callable[[str], Entry | None],
              revoked: Callable[[str], str | None], mode: Mode, latest: dict[str, int], now: dt.datetime,
              fresh: Callable[[str, envelope.Signature, dt.datetime], None]) -> None:
        """Raise RecordError unless the VIP record `value` at `key` may be used; hold it if its signer is unknown."""
        split = envelope.split(value)
        sig = split.signature
        if sig is None:
            if mode is Mode.REQUIRE:
                raise RecordError("the VIP record is not signed (registry.signatures is require)")
            if key in latest:
                raise RecordError("this VIP record was signed by its allocator; an unsigned one is not from it")
            self.forget(key)
            return
        entry = signer(sig.kid) or self._retired.get(sig.kid)
        if entry is None:
            self._hold(sig.kid, key, value, now)
            raise RecordError(f"signed by key {sig.kid}, which no site record seen lists (held until one does)")
        site, cert, not_after = entry
        self.forget(key)
        why = revoked(site)
        if why is not None:
            raise RecordError(f"signed by site {site}, which is revoked by the operator ({why})")
        if now >= not_after:
            raise RecordError(f"signed by key {sig.kid} of site {site}, which expired at {not_after:%Y-%m-%d %H:%M}Z")
        check_signature(cert, key, split)
        fresh(key, sig, now)
        latest[key] = sig.at

    def release(self, kids: Iterable[str], now: dt.datetime) -> list[tuple[str, bytes, int]]:
        """The records held for `kids` (signers a site record now lists), to apply again; expired ones dropped."""
        out: list[tuple[str, bytes, int]] = []
        for kid in kids:
            for key, held in self._held.pop(kid, {}).items():
                self._count -= 1
                del self._where[key]
                if now - held.since < HOLD_FOR:
                    out.append((key, held.value, 0))
        return sorted(out)

    def forget(self, key: str) -> None:
        """`key` was deleted, or holds a record that no longer waits: drop what was held for it."""
        kid = self._where.pop(key, None)
        if kid is not None:
            entries = self._held[kid]
            del entries[key]
            self._count -= 1
            if not entries:
                del self._held[kid]

    def retire(self, site: str, signers: Mapping[str, tuple[x509.Certificate, dt.datetime]], now: dt.datetime) -> None:
        """`site` left the registry: keep its signers for the VIP records they signed, until they expire."""
        if len(self._retired) + len(signers) > MAX_RETIRED:
            self._retired = {k: e for k, e in self._retired.items() if e[2] > now}
        for kid, (cert, not_after) in signers.items():
            if len(self._retired) >= MAX_RETIRED:
                break
            self._retired[kid] = (site, cert, not_after)

    def returned(self, kids: Iterable[str]) -> None:
        """A site record lists `kids` again: they are no longer kept as retired."""
        for kid in kids:
            self._retired.pop(kid, None)

    def retired(self, kid: str) -> str | None:
        """The departed site whose signer `kid` was, if it is kept."""
        entry = self._retired.get(kid)
        return entry[0] if entry is not None else None

    @property
    def held(self) -> int:
        """How many VIP records wait for their signer."""
        return self._count

    # -- private

    def _hold(self, kid: str, key: str, value: bytes, now: dt.datetime) -> None:
        self.forget(key)
        if self._count >= MAX_HELD:
            self._expire(now)
        entries = self._held.setdefault(kid, {})
        if self._count >= MAX_HELD or len(entries) >= MAX_HELD_PER_KID:
            if not entries:
                del self._held[kid]
            return
        entries[key] = Held(value, now)
        self._where[key] = kid
        self._count += 1

    def _expire(self, now: dt.datetime) -> None:
        for kid in list(self._held):
            for key, held in list(self._held[kid].items()):
                if now - held.since >= HOLD_FOR:
                    self.forget(key)
