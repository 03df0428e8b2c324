"""Verifying registry records: signatures, freshness, revocations, and the trust bundle in the registry.

`RecordVerifier` is what the agent hands the catalog (`check`) and the mirror (`document`, `deleted`,
`retry`). A site's records verify against the registry signers its own signed site record lists, whose
chains must verify to the mesh root through an intermediate of that site; mesh documents verify against
a root (the trust bundle) or an operator key (revocations). Every refusal is a RecordError whose message
says why; the mirror counts and logs it with the key, and the record never reaches a view.
Time comes from the clock it is given; nothing here does IO.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from federation.core import envelope
from federation.core.codec import dump_json
from federation.core.errors import RecordError
from federation.core.keys import HeartbeatKey, Keys
from federation.core.meshdocs import (
    Revocations,
    decode_revocations,
    decode_trust,
    revocations_key,
    trust_key,
)
from federation.core.verification import Effect, Mode, RecordCheck
from federation.pki.issuing import PkiError, load_certs
from federation.pki.signing import (
    CLOCK_SKEW,
    check_signature,
    kid_of,
    load_pem_cert,
    signed_time,
    verify_operator,
    verify_site_signer,
)
from federation.pki.verifying import TrustBundle
from federation.pki.viprecords import Entry, VipRecords
from federation.runtime.values import Value

Clock = Callable[[], dt.datetime]
MAX_PENDING = 10_000
"""Records held back for a site record not yet seen, mesh-wide: enough for a site's burst, bounded against floods."""
MAX_PENDING_PER_SITE = 1000
"""...and per site, so that one site's forged records cannot crowd out the others' (a site exports ~100)."""
_CACHE = 4096


@dataclass(slots=True)
class _SiteTrust:
    """What a site's last accepted site record says: its signers and the exports it lists."""

    signers: dict[str, tuple[x509.Certificate, dt.datetime]] = field(default_factory=dict)
    """kid -> (certificate, notAfter)"""
    listed: frozenset[str] | None = None
    """`ns/name` of every export it publishes (None: the record does not say)."""


class RecordVerifier:
    """Verifies the records of every site and the mesh documents; holds the trust bundle and revocations."""

    def __init__(self, keys: Keys, bundle: TrustBundle, mode: Mode = Mode.REQUIRE, *,
                 revocations: Revocations | None = None, trust_document: bytes | None = None,
                 clock: Clock | None = None) -> None:
        self._keys = keys
        self.mode = mode
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.trust: Value[TrustBundle] = Value(bundle, name="trust bundle")
        """The roots in force: the bootstrap bundle, or the newest signed bundle document taken since."""
        self.trust_document: Value[bytes | None] = Value(trust_document, name="trust bundle document")
        """The stored bytes of the bundle document in force (the agent keeps them across restarts)."""
        self.revocations: Value[Revocations] = Value(revocations or Revocations(), name="revocations")
        """The revocation list in force."""
        self.revocations_document: Value[bytes | None] = Value(None, name="revocations document")
        self._sites: dict[str, _SiteTrust] = {}
        self._signing_sites: set[str] = set()
        """Sites seen signing: an unsigned record of one of them is a forgery, whatever the mode."""
        self._kids: dict[str, str] = {}
        """kid -> the site whose signer it is."""
        self._latest: dict[str, int] = {}
        """key -> when the value last accepted there was signed (ms): an older one is a replay."""
        self._pending: dict[str, dict[str, tuple[bytes, int]]] = {}
        self._pending_count = 0
        self._chains: dict[tuple[str, str, int], tuple[str, x509.Certificate, dt.datetime] | str] = {}
        self._vips = VipRecords()
        self.rejected = 0

    # -- what the catalog calls

    @property
    def check(self) -> RecordCheck:
        """The catalog's hook: raise RecordError unless the record at `key` may be used."""
        return self._check

    def _check(self, key: str, parsed: object, value: bytes) -> None:
        site = getattr(parsed, "site", None)
        if site is None:
            self._vips.check(key, value, signer=self._vip_signer, revoked=self._revoked, mode=self.mode,
                             latest=self._latest, now=self._clock(), fresh=self._fresh)
            return
        revoked = self.revocations.get().sites.get(site)
        if revoked is not None:
            raise RecordError(f"site {site} is revoked by the operator ({revoked.reason or 'no reason given'})")
        split = envelope.split(value)
        if key == self._keys.site(site):
            self._site_record(key, site, split)
        else:
            self._site_child(key, site, parsed, split, value)

    # -- what the mirror calls

    def documents(self) -> Sequence[str]:
        """The keys of the mesh documents this verifier reads."""
        return (trust_key(self._keys), revocations_key(self._keys))

    def document(self, key: str, value: bytes | None) -> Effect:
        """Take a mesh document; a delete or an older one changes nothing (RecordError: refused, why)."""
        if value is None:
            return Effect(note=f"{key} was deleted; keeping the document in force (deleting cannot undo it)")
        if key == trust_key(self._keys):
            return self._take_trust(key, value)
        if key == revocations_key(self._keys):
            return self._take_revocations(key, value)
        return Effect()

    def deleted(self, key: str) -> None:
        """Forget what was known of a deleted record."""
        self._latest.pop(key, None)
        site = self._site_of(key)
        if site is None:
            self._vips.forget(key)
        elif key == self._keys.site(site):
            # Gone (its lease expired): its next site record says again what to verify its records with. The
            # VIPs it allocated still verify with its signers until the allocators that remain re-sign them.
            trust = self._sites.pop(site, None)
            if trust is not None:
                self._vips.retire(site, trust.signers, self._clock())
            self._drop_pending(site)
        else:
            entries = self._pending.get(site)
            if entries is not None and entries.pop(key, None) is not None:
                self._pending_count -= 1

    def retry(self, site: str) -> list[tuple[str, bytes, int]]:
        """Records of `site` held back until its site record came (its own, and VIP records its signers signed),
        to apply again."""
        entries = self._pending.pop(site, {})
        self._pending_count -= len(entries)
        trust = self._sites.get(site)
        vips = self._vips.release(trust.signers, self._clock()) if trust is not None else []
        return [(k, v, r) for k, (v, r) in sorted(entries.items())] + vips

    def resign_due(self, kid: str, site: str) -> bool:
        """Whether the allocator of `site` should re-sign a VIP record signed by `kid`: it is a signer of `site`
        other than its current one (renewed), or of a site that left the registry."""
        trust = self._sites.get(site) if self._kids.get(kid) == site else None
        return self._vips.retired(kid) is not None or (trust is not None and next(iter(trust.signers), None) != kid)

    def signer_site(self, kid: str) -> str | None:
        """The site whose registry signer `kid` is, or was (a site that left the registry), if known."""
        return self._kids.get(kid) or self._vips.retired(kid)

    def hold(self, key: str, value: bytes) -> None:
        """Keep a record rejected for want of its site's signers, to try again when they come (bounded)."""
        site = self._site_of(key)
        if site is None:
            return
        entries = self._pending.setdefault(site, {})
        if key not in entries:
            if self._pending_count >= MAX_PENDING or len(entries) >= MAX_PENDING_PER_SITE:
                return
            self._pending_count += 1
        entries[key] = (value, 0)

    # -- site records

    def _site_record(self, key: str, site: str, split: envelope.Split) -> None:
        if split.signature is None:
            self._unsigned(site)
            self._sites[site] = _SiteTrust()
            return
        try:
            obj = json.loads(split.body)
        except ValueError:
            raise RecordError("value is not JSON") from None
        if not isinstance(obj, dict):
            raise RecordError("value is not a JSON object")
        signers = obj.get("signers")
        if not isinstance(signers, list) or not signers or not all(isinstance(p, str) for p in signers):
            raise RecordError("a signed site record must list its signers (PEM certificates)")
        chain = obj.get("caChain", "")
        if not isinstance(chain, str):
            raise RecordError("caChain is not a string")
        now = self._clock()
        valid: dict[str, tuple[x509.Certificate, dt.datetime]] = {}
        reasons: dict[str, str] = {}
        for pem in signers[:4]:
            got = self._signer(pem, chain, site, now)
            if isinstance(got, str):
                reasons[pem] = got
            else:
                valid[got[0]] = got[1:]
        sig = split.signature
        if sig.kid not in valid:
            why = next(iter(reasons.values()), "")
            raise RecordError(f"site record of {site} is signed by key {sig.kid}, not by a valid signer it lists"
                              + (f" ({why})" if why else ""))
        check_signature(valid[sig.kid][0], key, split)
        self._fresh(key, sig, now)
        listed = obj.get("records")
        if listed is not None and (not isinstance(listed, list) or not all(isinstance(r, str) for r in listed)):
            raise RecordError("records is not a list of namespace/name")
        for kid in [k for k, s in self._kids.items() if s == site]:
            del self._kids[kid]
        for kid in valid:
            self._kids[kid] = site
        self._vips.returned(valid)
        self._sites[site] = _SiteTrust(valid, frozenset(listed) if listed is not None else None)
        self._signing_sites.add(site)
        self._latest[key] = sig.at

    def _site_child(self, key: str, site: str, parsed: object, split: envelope.Split, value: bytes) -> None:
        if split.signature is None:
            self._unsigned(site)
            return
        sig = split.signature
        trust = self._sites.get(site)
        if trust is None or not trust.signers:
            self.hold(key, value)
            raise RecordError(f"no signed site record of {site} is known to verify it against (held until one comes)")
        entry = trust.signers.get(sig.kid)
        if entry is None:
            other = self._kids.get(sig.kid)
            if other is not None and other != site:
                raise RecordError(f"signed with the key of site {other}, not of {site}")
            self.hold(key, value)
            raise RecordError(f"signed by key {sig.kid}, which the site record of {site} does not list")
        now = self._clock()
        if now >= entry[1]:
            raise RecordError(f"signed by key {sig.kid} of site {site}, which expired at {entry[1]:%Y-%m-%d %H:%M}Z")
        check_signature(entry[0], key, split)
        service = f"{getattr(parsed, 'namespace', '')}/{getattr(parsed, 'name', '')}"
        # The heartbeat is no export: the site record's list of exports does not name it.
        if trust.listed is not None and not isinstance(parsed, HeartbeatKey) and service not in trust.listed:
            self.hold(key, value)
            raise RecordError(f"the site record of {site} does not list {service} (a stale or replayed record)")
        self._fresh(key, sig, now)
        self._latest[key] = sig.at

    def _unsigned(self, site: str) -> None:
        if self.mode is Mode.REQUIRE:
            raise RecordError("the record is not signed (registry.signatures is require)")
        if site in self._signing_sites:
            raise RecordError(f"site {site} signs its records; this unsigned one is not from it")

    def _fresh(self, key: str, sig: envelope.Signature, now: dt.datetime) -> None:
        if signed_time(sig) > now + CLOCK_SKEW:
            raise RecordError(f"signed at {signed_time(sig):%Y-%m-%d %H:%M:%S}Z, in the future")
        latest = self._latest.get(key)
        if latest is not None and sig.at < latest:
            raise RecordError(f"signed at {signed_time(sig):%Y-%m-%d %H:%M:%S.%f}Z, before the record it would "
                              "replace: a replayed old record")

    def _signer(self, pem: str, chain: str, site: str, now: dt.datetime
                ) -> tuple[str, x509.Certificate, dt.datetime] | str:
        """(kid, certificate, notAfter) of a valid signer of `site`, or why it is not one (cached)."""
        bundle = self.trust.get()
        ckey = (pem, chain, id(bundle))
        got = self._chains.get(ckey)
        if got is not None and (isinstance(got, str) or now < got[2]):
            return got
        try:
            cert = load_pem_cert(pem)
            intermediates = [c for c in load_certs(chain.encode()) if c not in bundle.roots] if chain else []
            not_after = verify_site_signer(cert, intermediates, bundle.roots, site, now)
            result: tuple[str, x509.Certificate, dt.datetime] | str = (kid_of(cert), cert, not_after)
        except (RecordError, PkiError) as exc:
            result = str(exc)
        if len(self._chains) >= _CACHE:
            self._chains.clear()
        self._chains[ckey] = result
        return result

    # -- mesh documents and records

    def _take_trust(self, key: str, value: bytes) -> Effect:
        bundle = self.trust.get()
        split = envelope.split(value)
        if split.signature is None:
            raise RecordError("a trust bundle document must be signed by a root the mesh trusts")
        doc = decode_trust(split.body)
        if doc.sequence <= bundle.sequence:
            if doc.sequence == bundle.sequence:
                return Effect()
            raise RecordError(f"trust bundle sequence {doc.sequence} is older than the one in force "
                              f"({bundle.sequence}): a replayed old bundle")
        signer = next((r for r in bundle.roots if kid_of(r) == split.signature.kid), None)
        if signer is None:
            raise RecordError(f"trust bundle is signed by key {split.signature.kid}, not by a root in force")
        now = self._clock()
        if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
            raise RecordError("trust bundle is signed by a root that is not valid now")
        check_signature(signer, key, split)
        try:
            new = TrustBundle.from_pem("".join(doc.roots).encode(), sequence=doc.sequence)
        except Exception as exc:
            raise RecordError(f"trust bundle: {exc}") from None
        if new.trust_domain != bundle.trust_domain or doc.trust_domain != bundle.trust_domain:
            raise RecordError(f"trust bundle names trust domain {doc.trust_domain}, not {bundle.trust_domain} "
                              "(trust domains are never merged)")
        self.trust.set(new)
        self.trust_document.set(value)
        self._chains.clear()
        return Effect(recheck=True, note=f"trust bundle {doc.sequence} in force: {len(new.roots)} root(s)")

    def _take_revocations(self, key: str, value: bytes) -> Effect:
        current = self.revocations.get()
        obj, _ = self.operator_record(key, value)
        doc = decode_revocations(dump_json(obj))
        if doc.sequence <= current.sequence:
            if doc.sequence == current.sequence:
                return Effect()
            raise RecordError(f"revocation list {doc.sequence} is older than the one in force ({current.sequence}): "
                              "a replayed old list")
        revoked = frozenset(doc.sites) - frozenset(current.sites)
        restored = frozenset(current.sites) - frozenset(doc.sites)
        self.revocations.set(doc)
        self.revocations_document.set(value)
        for site in revoked:
            self._sites.pop(site, None)
            self._drop_pending(site)
        parts = [f"revoked {', '.join(sorted(revoked))}" if revoked else "",
                 f"restored {', '.join(sorted(restored))}" if restored else ""]
        return Effect(drop_sites=revoked, recheck=bool(restored),
                      note=f"revocation list {doc.sequence}: " + ("; ".join(p for p in parts if p) or "no change"))

    def operator_record(self, key: str, value: bytes) -> tuple[dict[str, Any], str]:
        """The body of a record signed by an operator, and the operator's name; RecordError if it is not one."""
        split = envelope.split(value)
        if split.signature is None:
            raise RecordError("the record is not signed by an operator")
        try:
            obj = json.loads(split.body)
        except ValueError:
            raise RecordError("value is not JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("signer"), str):
            raise RecordError("an operator-signed record carries its signer's certificate (signer)")
        cert = load_pem_cert(obj["signer"])
        if kid_of(cert) != split.signature.kid:
            raise RecordError(f"signed by key {split.signature.kid}, not by the signer it names")
        revoked = self.revocations.get().operators.get(split.signature.kid)
        if revoked is not None:
            raise RecordError(f"signed by operator key {split.signature.kid}, which is revoked ({revoked.reason})")
        at = signed_time(split.signature)
        if at > self._clock() + CLOCK_SKEW:
            raise RecordError(f"signed at {at:%Y-%m-%d %H:%M:%S}Z, in the future")
        # Checked at the time of signing: a policy does not lapse when its operator's key later expires.
        name = verify_operator(cert, self.trust.get().roots, at)
        check_signature(cert, key, split)
        return obj, name

    def mesh_policy(self, key: str, value: bytes) -> bytes:
        """A mesh policy record as its codec reads it: verified when signed; unsigned only in accept mode."""
        split = envelope.split(value)
        if split.signature is None:
            if self.mode is Mode.REQUIRE:
                raise RecordError("the policy is not signed by an operator (registry.signatures is require)")
            return value
        obj, _ = self.operator_record(key, value)
        obj.pop("signer", None)
        return dump_json(obj)

    # -- private

    def _vip_signer(self, kid: str) -> Entry | None:
        site = self._kids.get(kid)
        why = self._revoked(site) if site is not None else None
        if why is not None:
            raise RecordError(f"signed by site {site}, which is revoked by the operator ({why})")
        trust = self._sites.get(site) if site is not None else None
        entry = trust.signers.get(kid) if trust is not None else None
        return (site, *entry) if site is not None and entry is not None else None

    def _revoked(self, site: str) -> str | None:
        revoked = self.revocations.get().sites.get(site)
        return None if revoked is None else revoked.reason or "no reason given"

    def _site_of(self, key: str) -> str | None:
        head = self._keys.sites()
        return key[len(head):].split("/", 1)[0] if key.startswith(head) else None

    def _drop_pending(self, site: str) -> None:
        self._pending_count -= len(self._pending.pop(site, {}))
