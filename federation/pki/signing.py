"""Record signing keys and their checks: a site's registry signer, the operator's key, root-signed documents.

Who signs what (docs/security.md):
- a site's records (site record, exports, endpoint chunks): its registry signer, a leaf issued from the
  site's intermediate CA with SPIFFE ID `spiffe://<td>/site/<site>/registry`;
- mesh-wide documents (policies, revocations, mesh settings): an operator leaf issued from the root,
  `spiffe://<td>/operator/<name>`;
- the trust bundle: a root key itself (the root that was in force before a rotation began).

The SPIFFE path keeps the roles apart: a gateway leaf cannot sign records, a signer cannot open tunnels
(the gateway wants `/gateway/<name>`). No leaf has a common name, so none can stand for an etcd user.
Pure: time comes in as an argument; the `save_*`/`load_*` helpers at the end write and read PEM files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from federation.core import envelope
from federation.core.codec import dump_json
from federation.core.errors import RecordError
from federation.pki.issuing import (
    BACKDATE,
    Authority,
    PkiError,
    cert_pem,
    check_label,
    key_pem,
    load_certs,
    site_of_ca,
    trust_domain_of,
    uris_of,
)
from federation.runtime.files import write_private, write_public

SIGNER_LIFETIME = dt.timedelta(days=30)
"""A site's registry signer: renewed at half life by the agent, so a stolen one is useless within a month."""
OPERATOR_LIFETIME = dt.timedelta(days=730)
"""The operator's key signs policies and revocations by hand; two years, warned about 30 days ahead."""
CLOCK_SKEW = dt.timedelta(minutes=5)
"""How far in the future a signature may claim to be made (clocks of two machines disagree a little)."""
SIGNER_CERT, SIGNER_KEY = "registry-signer.crt", "registry-signer.key"
OPERATOR_CERT, OPERATOR_KEY = "operator.crt", "operator.key"

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_ERRORS: tuple[type[Exception], ...] = (
    ValueError, VerificationError, x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm, PkiError,
)
_VERIFY_ERRORS: tuple[type[Exception], ...] = (*_ERRORS, Warning)


def registry_spiffe_id(trust_domain: str, site: str) -> str:
    """The SPIFFE ID of a site's registry signer."""
    return f"spiffe://{trust_domain}/site/{site}/registry"


def operator_spiffe_id(trust_domain: str, name: str) -> str:
    """The SPIFFE ID of an operator's signing key."""
    return f"spiffe://{trust_domain}/operator/{name}"


def kid_of(cert: x509.Certificate) -> str:
    """The key id a signature names: the first 16 bytes of the SHA-256 of the certificate, in hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()[:16].hex()


@dataclass(frozen=True, slots=True)
class Signer:
    """A signing certificate with its key: signs records for the keys it is given."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    """The certificates between it and the root (a site signer: the site intermediate)."""

    @property
    def kid(self) -> str:
        """The key id its signatures carry."""
        return kid_of(self.cert)

    def sign(self, key: str, record: dict[str, Any] | bytes, at: int) -> bytes:
        """The stored value of `record` (a mapping, or its canonical JSON) at etcd key `key`, signed at `at`
        (ms since the epoch)."""
        body = record if isinstance(record, bytes) else dump_json(record)
        kid = self.kid
        value = self.key.sign(envelope.payload(key, envelope.ALG, at, kid, body), ec.ECDSA(hashes.SHA256()))
        return envelope.seal(body, envelope.Signature(envelope.ALG, at, kid, value))

    def cert_pem(self) -> str:
        """The signing certificate as PEM (what the site record lists under `signers`)."""
        return cert_pem(self.cert).decode()


def check_signature(cert: x509.Certificate, key: str, split: envelope.Split) -> None:
    """Raise RecordError unless `split`'s signature over its body at `key` was made by `cert`'s key."""
    sig = split.signature
    if sig is None:
        raise RecordError("the record is not signed")
    if sig.alg != envelope.ALG:
        raise RecordError(f"signature algorithm {sig.alg!r} is not {envelope.ALG}")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise RecordError("the signing certificate does not hold an EC key")
    try:
        public.verify(sig.value, envelope.payload(key, sig.alg, sig.at, sig.kid, split.body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise RecordError(f"the signature by key {sig.kid} does not match the record (altered, or moved from "
                          "another key)") from None


# ---------------------------------------------------------------- issuing


def issue_registry_signer(site_ca: Authority, now: dt.datetime, lifetime: dt.timedelta = SIGNER_LIFETIME
                          ) -> Signer:
    """A registry signer for the site `site_ca` belongs to."""
    site = site_of_ca(site_ca.cert)
    td = trust_domain_of(site_ca.cert)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(site_ca, key.public_key(), registry_spiffe_id(td, site), site, now, lifetime)
    return Signer(cert, key, (site_ca.cert,))


def issue_operator(root: Authority, name: str, now: dt.datetime, lifetime: dt.timedelta = OPERATOR_LIFETIME
                   ) -> Signer:
    """An operator signing key issued by the mesh root (policies, revocations, mesh settings)."""
    check_label("operator name", name)
    td = trust_domain_of(root.cert)
    key = ec.generate_private_key(ec.SECP256R1())
    return Signer(_leaf(root, key.public_key(), operator_spiffe_id(td, name), "operator", now, lifetime), key)


def root_signer(root: Authority) -> Signer:
    """A root CA's own key as a signer (for trust bundle documents only)."""
    return Signer(root.cert, root.key)


# ---------------------------------------------------------------- verifying


def verify_site_signer(cert: x509.Certificate, intermediates: list[x509.Certificate],
                       roots: tuple[x509.Certificate, ...], site: str, now: dt.datetime) -> dt.datetime:
    """Check that `cert` is the registry signer of `site`: it verifies at `now` to one of `roots` through an
    intermediate of that same site, and names `spiffe://<td>/site/<site>/registry`. Returns its notAfter."""
    td = _trust_domain(roots)
    if _uri(cert) != registry_spiffe_id(td, site):
        raise RecordError(f"signer {_uri(cert)} is not the registry signer of site {site}")
    chain = _verify(cert, intermediates, roots, now)
    if len(chain) != 3:
        raise RecordError(f"signer chain has {len(chain)} certificates, not signer/site/root")
    try:
        issuer = site_of_ca(chain[1])
    except PkiError as exc:
        raise RecordError(f"signer issuer: {exc}") from None
    if issuer != site:
        raise RecordError(f"signer was issued by the CA of site {issuer}, not {site}")
    return cert.not_valid_after_utc


def verify_operator(cert: x509.Certificate, roots: tuple[x509.Certificate, ...], at: dt.datetime) -> str:
    """The operator name of an operator signing certificate that verifies to one of `roots` at `at`."""
    uri = _uri(cert)
    td = _trust_domain(roots)
    head = f"spiffe://{td}/operator/"
    name = uri[len(head):] if uri.startswith(head) else ""
    if not _NAME.match(name):
        raise RecordError(f"signer {uri} is not an operator of trust domain {td}")
    chain = _verify(cert, [], roots, at)
    if len(chain) != 2:
        raise RecordError(f"operator chain has {len(chain)} certificates, not operator/root")
    return name


def signed_time(sig: envelope.Signature) -> dt.datetime:
    """When a signature says it was made."""
    return dt.datetime.fromtimestamp(sig.at / 1000, dt.UTC)


def load_pem_cert(pem: str | bytes) -> x509.Certificate:
    """One certificate from PEM; RecordError if that is not what it is."""
    try:
        certs = load_certs(pem.encode() if isinstance(pem, str) else pem)
    except PkiError as exc:
        raise RecordError(str(exc)) from None
    if len(certs) != 1:
        raise RecordError(f"{len(certs)} certificates where one belongs")
    return certs[0]


# ---------------------------------------------------------------- files


def save_signer(directory: Path, signer: Signer, cert_name: str, key_name: str) -> None:
    """Write a signer's certificate (with its chain) and key (0600)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(directory / key_name, key_pem(signer.key))
    write_public(directory / cert_name, cert_pem(signer.cert, *signer.chain))


def load_signer(directory: Path, cert_name: str = OPERATOR_CERT, key_name: str = OPERATOR_KEY) -> Signer:
    """Read a signer written by `save_signer`; PkiError naming the file and the reason."""
    try:
        certs = load_certs((directory / cert_name).read_bytes())
        key = serialization.load_pem_private_key((directory / key_name).read_bytes(), password=None)
    except OSError as exc:
        raise PkiError(f"cannot read signer in {directory}: {exc.strerror}: {exc.filename}") from None
    except ValueError as exc:
        raise PkiError(f"{directory / key_name}: not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or certs[0].public_key() != key.public_key():
        raise PkiError(f"{directory}: {key_name} does not belong to {cert_name}")
    return Signer(certs[0], key, tuple(certs[1:]))


# ---------------------------------------------------------------- private


def _leaf(issuer: Authority, public: ec.EllipticCurvePublicKey, uri: str, unit: str, now: dt.datetime,
          lifetime: dt.timedelta) -> x509.Certificate:
    ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfed"),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit)]))
        .issuer_name(issuer.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + lifetime, issuer.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        # The verifier's client profile wants clientAuth; the SPIFFE path, not the EKU, says what it may do.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(issuer.key, hashes.SHA256())


def _verify(cert: x509.Certificate, intermediates: list[x509.Certificate], roots: tuple[x509.Certificate, ...],
            at: dt.datetime) -> list[x509.Certificate]:
    if not roots:
        raise RecordError("no trusted root to verify the signer against")
    verifier = PolicyBuilder().store(Store(list(roots))).time(at).build_client_verifier()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return list(verifier.verify(cert, intermediates).chain)
        except _VERIFY_ERRORS as exc:
            raise RecordError(f"signer {_uri(cert)} does not verify to a trusted root: {_plain(exc)}") from None


def _plain(exc: Exception) -> str:
    """cryptography's verification errors in fewer words."""
    text = str(exc)
    if "candidates exhausted" in text:
        return "no chain to a root in force"
    if "not valid at validation time" in text:
        return "a certificate of the chain is expired or not yet valid"
    return text.split(" (encountered")[0]


def _trust_domain(roots: tuple[x509.Certificate, ...]) -> str:
    if not roots:
        raise RecordError("no trusted root to verify the signer against")
    try:
        return trust_domain_of(roots[0])
    except PkiError as exc:
        raise RecordError(f"trusted root: {exc}") from None


def _uri(cert: x509.Certificate) -> str:
    try:
        uris = uris_of(cert)
    except _ERRORS:
        return "<unparsable>"
    return uris[0] if len(uris) == 1 else f"<{len(uris)} URI SANs>"
