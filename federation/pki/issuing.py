"""Mesh PKI: the root CA, one name-constrained intermediate per site, gateway leaf certificates.

Pure except for the `save_*`/`load_*` helpers at the end, which write PEM files (keys mode 0600).
Time always comes in as an argument.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.core.errors import MeshfedError
from federation.runtime.files import write_private, write_public

ROOT_LIFETIME = dt.timedelta(days=3650)
SITE_LIFETIME = dt.timedelta(days=730)
LEAF_LIFETIME = dt.timedelta(hours=24)
BACKDATE = dt.timedelta(minutes=5)
"""Certificates start a little in the past so a peer whose clock runs slightly behind accepts them."""

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")

ROOT_CERT, ROOT_KEY = "ca.crt", "ca.key"
SITE_CERT, SITE_KEY, TRUST_BUNDLE = "site.crt", "site.key", "trust-bundle.pem"


class PkiError(MeshfedError):
    """A CA directory, certificate or name is unusable; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA that can sign: its certificate, its key, and the certificates above it (root last)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    parents: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True, slots=True)
class Issued:
    """A leaf certificate with its key and the chain to present with it (intermediate, not the root)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    def chain_pem(self) -> bytes:
        """Leaf then intermediates, as a PEM bundle for `SSLContext.load_cert_chain`."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain))

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return key_pem(self.key)


def check_trust_domain(td: str) -> str:
    """Return `td` if it is a valid SPIFFE trust domain (lowercase DNS-like name), else raise PkiError."""
    if not _TRUST_DOMAIN.match(td) or ".." in td:
        raise PkiError(f"trust domain {td!r} is not a lowercase DNS-like name")
    return td


def check_label(kind: str, value: str) -> str:
    """Return `value` if it is a DNS label, else raise PkiError naming `kind`."""
    if not _LABEL.match(value):
        raise PkiError(f"{kind} {value!r} is not a DNS label (lowercase letters, digits, '-')")
    return value


def site_spiffe_id(trust_domain: str, site: str) -> str:
    """The SPIFFE ID carried by a site's intermediate CA."""
    return f"spiffe://{trust_domain}/site/{site}"


def gateway_spiffe_id(trust_domain: str, site: str, gateway: str) -> str:
    """The SPIFFE ID of a site's gateway (DESIGN.md: Identity and mTLS)."""
    return f"spiffe://{trust_domain}/site/{site}/gateway/{gateway}"


def new_root(trust_domain: str, now: dt.datetime, lifetime: dt.timedelta = ROOT_LIFETIME,
             label: str = "") -> Authority:
    """A self-signed ECDSA P-256 mesh root CA for `trust_domain`; `label` tells the roots of a rotation apart."""
    check_trust_domain(trust_domain)
    key = ec.generate_private_key(ec.SECP256R1())
    cn = f"meshfed root CA {trust_domain}"
    if label:
        cn = f"{cn[:64 - len(label) - 3]} ({label})"
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfed"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn[:64]),
    ])
    builder = (
        _base(name, name, key.public_key(), now, lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
    )
    return Authority(builder.sign(key, hashes.SHA256()), key)


def new_site_ca(root: Authority, site: str, now: dt.datetime,
                lifetime: dt.timedelta = SITE_LIFETIME) -> Authority:
    """An intermediate CA for `site`, name-constrained to the DNS names under `<site>.<trust domain>`."""
    key = ec.generate_private_key(ec.SECP256R1())
    return Authority(site_ca_cert(root, site, key.public_key(), now, lifetime), key, (root.cert,))


def site_ca_cert(root: Authority, site: str, public: ec.EllipticCurvePublicKey, now: dt.datetime,
                 lifetime: dt.timedelta = SITE_LIFETIME) -> x509.Certificate:
    """The intermediate certificate of `site` for a key held elsewhere (a VM joining: its key never leaves it)."""
    check_label("site", site)
    td = trust_domain_of(root.cert)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfed"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "site"),
        x509.NameAttribute(NameOID.COMMON_NAME, site),
    ])
    # RFC 5280 4.2.1.10: a URI constraint names only a host, so it cannot express the /site/<site> path
    # (and the cryptography verifier rejects URI constraints); the verifier checks that a leaf's SPIFFE
    # site equals its issuer's instead.
    constraints = x509.NameConstraints(permitted_subtrees=[x509.DNSName(f"{site}.{td}")], excluded_subtrees=None)
    builder = (
        _base(name, root.cert.subject, public, now, lifetime, not_after_cap=root.cert)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(constraints, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(_aki(root.cert), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(site_spiffe_id(td, site))]),
            critical=False,
        )
    )
    return builder.sign(root.key, hashes.SHA256())


def issue_gateway(site_ca: Authority, gateway: str, now: dt.datetime,
                  lifetime: dt.timedelta = LEAF_LIFETIME) -> Issued:
    """A leaf for gateway `gateway` of the site that `site_ca` belongs to, for TLS client and server use."""
    check_label("gateway", gateway)
    td = trust_domain_of(site_ca.cert)
    site = site_of_ca(site_ca.cert)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfed"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site),
    ])
    san = x509.SubjectAlternativeName([
        x509.UniformResourceIdentifier(gateway_spiffe_id(td, site, gateway)),
        x509.DNSName(f"{gateway}.{site}.{td}"),
    ])
    builder = (
        _base(name, site_ca.cert.subject, key.public_key(), now, lifetime, not_after_cap=site_ca.cert)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(san, critical=False)
        .add_extension(_aki(site_ca.cert), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(builder.sign(site_ca.key, hashes.SHA256()), key, (site_ca.cert,))


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s key signed `cert` (roots of a rotation share a name, so names do not tell)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def uris_of(cert: x509.Certificate) -> list[str]:
    """The URI SANs of `cert` (empty when it has no SAN extension)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def trust_domain_of(ca_cert: x509.Certificate) -> str:
    """The trust domain named by a mesh CA certificate's SPIFFE URI SAN."""
    for uri in uris_of(ca_cert):
        if uri.startswith("spiffe://"):
            return check_trust_domain(uri[len("spiffe://"):].split("/", 1)[0])
    raise PkiError("certificate carries no spiffe:// URI SAN: not a meshfed CA")


def site_of_ca(ca_cert: x509.Certificate) -> str:
    """The site a site intermediate belongs to, from its `spiffe://<td>/site/<site>` URI SAN."""
    for uri in uris_of(ca_cert):
        parts = uri.removeprefix("spiffe://").split("/")
        if uri.startswith("spiffe://") and len(parts) == 3 and parts[1] == "site":
            return check_label("site", parts[2])
    raise PkiError("certificate carries no spiffe://<td>/site/<site> URI SAN: not a site CA")


def cert_pem(*certs: x509.Certificate) -> bytes:
    """Certificates as one PEM bundle."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_certs(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; PkiError when there is none or one is malformed."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except (ValueError, x509.InvalidVersion) as exc:
        raise PkiError(f"not a PEM certificate bundle: {exc}") from None
    return certs


# ---------------------------------------------------------------- files


def save_root(out: Path, root: Authority, force: bool = False) -> None:
    """Write `ca.crt` and `ca.key` into `out`; refuse to replace an existing CA unless `force`."""
    _refuse_existing(out, (ROOT_CERT, ROOT_KEY), force)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(out / ROOT_KEY, key_pem(root.key))
    write_public(out / ROOT_CERT, cert_pem(root.cert))


def load_authority(directory: Path, cert_name: str = ROOT_CERT, key_name: str = ROOT_KEY) -> Authority:
    """Read a CA (certificate, key, and any parents in the same certificate file) from `directory`."""
    try:
        certs = load_certs((directory / cert_name).read_bytes())
        key = serialization.load_pem_private_key((directory / key_name).read_bytes(), password=None)
    except OSError as exc:
        raise PkiError(f"cannot read CA in {directory}: {exc.strerror}: {exc.filename}") from None
    except ValueError as exc:
        raise PkiError(f"{directory / key_name}: not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{directory / key_name}: not an EC private key")
    if certs[0].public_key() != key.public_key():
        raise PkiError(f"{directory}: {key_name} does not belong to {cert_name}")
    return Authority(certs[0], key, tuple(certs[1:]))


def save_site(out: Path, site_ca: Authority, force: bool = False) -> None:
    """Write what an operator copies to a site: `site.crt` (with the root), `site.key`, `trust-bundle.pem`."""
    _refuse_existing(out, (SITE_CERT, SITE_KEY), force)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(out / SITE_KEY, key_pem(site_ca.key))
    write_public(out / SITE_CERT, cert_pem(site_ca.cert, *site_ca.parents))
    write_public(out / TRUST_BUNDLE, cert_pem(*site_ca.parents[-1:]))


def load_site(directory: Path) -> Authority:
    """Read a site CA directory written by `save_site`."""
    auth = load_authority(directory, SITE_CERT, SITE_KEY)
    site_of_ca(auth.cert)
    return auth


def _refuse_existing(out: Path, names: tuple[str, ...], force: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise PkiError(f"{out} already holds {', '.join(existing)}; pass --force to replace it")


def _base(subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, now: dt.datetime,
          lifetime: dt.timedelta, not_after_cap: x509.Certificate | None = None) -> x509.CertificateBuilder:
    not_after = now + lifetime
    if not_after_cap is not None:
        not_after = min(not_after, not_after_cap.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def seconds_to_half_life(cert: x509.Certificate, now: dt.datetime) -> float:
    """Seconds from `now` until half of `cert`'s lifetime has passed (0 if already past): when to renew it."""
    half = cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) / 2
    return max(0.0, (half - now).total_seconds())
