"""Pure peer verification: who is on the other end of a gateway tunnel, and may they be there.

The TLS stack has already checked the chain against the mesh root during the handshake; this
re-verifies the leaf against the intermediate that the registry says its site uses (so one site's
CA cannot vouch for another site), and checks the SPIFFE ID. Time comes in as an argument.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Container
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from federation.core.errors import MeshfedError
from federation.core.view import MeshView
from federation.pki.issuing import PkiError, cert_pem, load_certs, site_of_ca, trust_domain_of, uris_of

_PARSE_ERRORS: tuple[type[Exception], ...] = (
    # What cryptography raises on malformed certificates; found by fuzzing, not all are ValueErrors.
    ValueError, x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)
_VERIFY_ERRORS: tuple[type[Exception], ...] = (VerificationError, *_PARSE_ERRORS)
_ISSUER_ERRORS: tuple[type[Exception], ...] = (PkiError, *_PARSE_ERRORS)
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+\Z")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+\Z")


class PeerRejected(MeshfedError):
    """A peer's certificate or identity is not acceptable; the message is the reason to log."""

    def __init__(self, message: str, cause: str = "identity") -> None:
        super().__init__(message)
        self.cause = cause
        """The kind of reason, from a fixed set (`unknown-site`, `unverified`...): what refusal logs are
        de-duplicated by, since the message carries what the peer chose (its SPIFFE ID, its site)."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed SPIFFE ID: trust domain and path segments."""

    trust_domain: str
    path: tuple[str, ...]

    def __str__(self) -> str:
        return "spiffe://" + "/".join((self.trust_domain, *self.path))


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """A verified gateway peer."""

    spiffe_id: str
    site: str
    gateway: str
    not_after: dt.datetime | None = None
    """When the peer's certificate expires: a long-lived tunnel must not outlive it."""


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """The mesh root certificates and the trust domain they speak for."""

    trust_domain: str
    roots: tuple[x509.Certificate, ...]
    sequence: int = 0
    """Of the signed bundle document it came from (0: the bootstrap bundle of the site's CA directory)."""

    @classmethod
    def from_pem(cls, pem: bytes, sequence: int = 0) -> TrustBundle:
        """A bundle from PEM roots, which must all name the same trust domain."""
        try:
            roots = tuple(load_certs(pem))
            domains = {trust_domain_of(c) for c in roots}
        except PkiError as exc:
            raise PeerRejected(f"trust bundle: {exc}", cause="trust-bundle") from None
        if len(domains) != 1:
            raise PeerRejected(f"trust bundle names {len(domains)} trust domains, not one", cause="trust-bundle")
        return cls(domains.pop(), roots, sequence)

    def pem(self) -> bytes:
        """The roots as one PEM bundle (what TLS contexts load)."""
        return cert_pem(*self.roots)


def parse_spiffe_id(uri: str) -> SpiffeId:
    """Parse a SPIFFE ID strictly (SPIFFE-ID spec 2): lowercase trust domain, no port, query or dots."""
    if not uri.startswith("spiffe://"):
        raise PeerRejected(f"URI SAN {uri[:80]!r} is not a spiffe:// ID", cause="spiffe-id")
    rest = uri[len("spiffe://"):]
    td, _, path = rest.partition("/")
    if not td or not _TRUST_DOMAIN.match(td) or len(td) > 255:
        raise PeerRejected(f"SPIFFE ID {uri[:80]!r} has an invalid trust domain", cause="spiffe-id")
    segments = tuple(path.split("/")) if path else ()
    for s in segments:
        if not _SEGMENT.match(s) or s in (".", ".."):
            raise PeerRejected(f"SPIFFE ID {uri[:80]!r} has an invalid path segment", cause="spiffe-id")
    return SpiffeId(td, segments)


def gateway_of(spiffe: SpiffeId) -> tuple[str, str]:
    """(site, gateway) of a gateway SPIFFE ID `spiffe://<td>/site/<site>/gateway/<name>`."""
    p = spiffe.path
    if len(p) != 4 or p[0] != "site" or p[2] != "gateway":
        raise PeerRejected(f"SPIFFE ID {spiffe} does not name a gateway (/site/<site>/gateway/<name>)",
                           cause="not-a-gateway")
    return p[1], p[3]


def verify_peer(leaf_der: bytes | None, view: MeshView, bundle: TrustBundle, now: dt.datetime,
                expect_site: str | None = None, revoked: Container[str] = ()) -> PeerIdentity:
    """Check a peer gateway's leaf certificate against the mesh and the registry; raise PeerRejected.

    Accepts when: the leaf has exactly one SPIFFE URI SAN naming a gateway in `bundle`'s trust
    domain; its site is in `view` (and is `expect_site` when given); the leaf verifies at `now` to a
    root of `bundle` through an intermediate that the site's registry record carries; and that
    intermediate belongs to the same site.
    """
    if not leaf_der:
        raise PeerRejected("peer presented no certificate", cause="no-certificate")
    with warnings.catch_warnings():
        # cryptography only warns about some malformations (a serial that is not positive, a country
        # name of the wrong length); a peer certificate with one is refused like any malformed one.
        warnings.simplefilter("error")
        try:
            return _verify(leaf_der, view, bundle, now, expect_site, revoked)
        except Warning as exc:
            raise PeerRejected(f"peer certificate is malformed: {exc}", cause="malformed") from None


def _verify(leaf_der: bytes, view: MeshView, bundle: TrustBundle, now: dt.datetime,
            expect_site: str | None, revoked: Container[str]) -> PeerIdentity:
    try:
        leaf = x509.load_der_x509_certificate(leaf_der)
        uris = uris_of(leaf)  # extensions are parsed lazily: a malformed one raises here
    except _PARSE_ERRORS as exc:
        raise PeerRejected(f"peer certificate does not parse: {exc}", cause="malformed") from None
    if len(uris) != 1:
        raise PeerRejected(f"peer certificate has {len(uris)} URI SANs, a SPIFFE leaf has exactly one",
                           cause="uri-sans")
    spiffe = parse_spiffe_id(uris[0])
    if spiffe.trust_domain != bundle.trust_domain:
        raise PeerRejected(f"peer {spiffe} is outside trust domain {bundle.trust_domain}", cause="trust-domain")
    site_name, gateway = gateway_of(spiffe)
    if expect_site is not None and site_name != expect_site:
        raise PeerRejected(f"peer {spiffe} is not a gateway of site {expect_site}", cause="wrong-site")
    if site_name in revoked:
        raise PeerRejected(f"peer {spiffe}: site {site_name} is revoked by the operator", cause="revoked")
    site = view.sites.get(site_name)
    if site is None:
        raise PeerRejected(f"peer {spiffe} claims site {site_name}, which is not in the registry", cause="unknown-site")
    if not site.ca_chain:
        raise PeerRejected(f"site {site_name} publishes no CA chain in the registry", cause="no-ca-chain")
    try:
        intermediates = [c for c in load_certs(site.ca_chain.encode()) if c not in bundle.roots]
    except PkiError as exc:
        raise PeerRejected(f"site {site_name} CA chain in the registry: {exc}", cause="bad-ca-chain") from None
    verifier = PolicyBuilder().store(Store(list(bundle.roots))).time(now).build_client_verifier()
    try:
        chain = verifier.verify(leaf, intermediates).chain
    except _VERIFY_ERRORS as exc:
        raise PeerRejected(
            f"peer {spiffe} does not verify through the CA that site {site_name} registered: {exc}", cause="unverified"
        ) from None
    if len(chain) != 3:
        raise PeerRejected(f"peer {spiffe} chain has {len(chain)} certificates, not leaf/site/root",
                           cause="chain-length")
    try:
        issuer_site = site_of_ca(chain[1])
    except _ISSUER_ERRORS as exc:
        raise PeerRejected(f"peer {spiffe} issuer: {exc}", cause="issuer") from None
    if issuer_site != site_name:
        raise PeerRejected(f"peer {spiffe} was issued by the CA of site {issuer_site}, not {site_name}",
                           cause="issuer-site")
    return PeerIdentity(str(spiffe), site_name, gateway, leaf.not_valid_after_utc)
