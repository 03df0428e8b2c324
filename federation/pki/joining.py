"""Joining a VM to the mesh without handing it a long-lived secret: one-time tokens and a CSR. Pure.

`meshfed join-token create` (where the root CA lives) stores a token's hash, site and expiry in the CA
directory and prints the token: its id, a 256-bit one-time secret, the site, the expiry, where the signing
endpoint listens and the SHA-256 of the mesh root (so the VM can tell the real endpoint from another).
On the VM, `meshfed vm install --join TOKEN` makes the site key there, sends a CSR with the token, and
gets the site's intermediate certificate back. The token works once, before it expires, for its site
only; the key never leaves the VM, and the certificate it gets is the VM's identity from then on (kept
in /etc/meshfed/site across reboots; the gateway and the registry signer are issued from it locally).
Time comes in as an argument; the file helpers of the store live with the CLI.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.core.errors import MeshfedError
from federation.pki.issuing import (
    BACKDATE,
    SITE_LIFETIME,
    Authority,
    Issued,
    check_label,
    site_ca_cert,
    site_of_ca,
    trust_domain_of,
)

PREFIX = "mfjoin1."
MAX_TTL = dt.timedelta(days=7)
"""A token is for one join soon: a week at most, an hour by default (the CLI)."""
_ID = re.compile(r"[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class JoinRefused(MeshfedError):
    """A join request is refused; the message is the reason (said to the VM and logged)."""


@dataclass(frozen=True, slots=True)
class Token:
    """What a join token carries."""

    id: str
    secret: str
    site: str
    expires: float
    """Seconds since the epoch."""
    url: str
    """The signing endpoint, https://host:port."""
    root_sha256: str
    """Hex SHA-256 of the mesh root certificate (DER): the endpoint must present a chain to it."""

    def encode(self) -> str:
        """The token as one line to paste."""
        raw = json.dumps({"id": self.id, "secret": self.secret, "site": self.site, "exp": self.expires,
                          "url": self.url, "ca": self.root_sha256}, separators=(",", ":")).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Entry:
    """What the CA directory keeps of a token: never the secret, only its hash."""

    site: str
    secret_sha256: str
    expires: float
    created: float
    used: float | None = None
    used_by: str = ""


def new_token(site: str, ttl: dt.timedelta, now: dt.datetime, url: str, root: x509.Certificate) -> tuple[Token, Entry]:
    """A fresh token for `site` and the entry to store for it."""
    check_label("site", site)
    if not dt.timedelta(0) < ttl <= MAX_TTL:
        raise JoinRefused(f"a token lives more than 0 and at most {MAX_TTL.days} days")
    secret = secrets.token_urlsafe(32)
    token = Token(secrets.token_hex(8), secret, site, (now + ttl).timestamp(), url, root_fingerprint(root))
    return token, Entry(site, _hash(secret), token.expires, now.timestamp())


def decode_token(text: str) -> Token:
    """A token as printed by `meshfed join-token create`; JoinRefused if it is not one."""
    text = text.strip()
    if not text.startswith(PREFIX):
        raise JoinRefused(f"not a meshfed join token (it starts with {PREFIX})")
    body = text[len(PREFIX):]
    try:
        obj = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        token = Token(str(obj["id"]), str(obj["secret"]), str(obj["site"]), float(obj["exp"]), str(obj["url"]),
                      str(obj["ca"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise JoinRefused("the join token is damaged (copy it again, whole)") from None
    check_request(token.id, token.site)
    if not _SECRET.fullmatch(token.secret):
        raise JoinRefused("the join token's secret is not 43 URL-safe base64 characters (copy it again, whole)")
    if not _SHA256.fullmatch(token.root_sha256):
        raise JoinRefused("the join token's root fingerprint is not 64 hex digits (copy it again, whole)")
    if not token.url.startswith("https://") or not token.url.isprintable():
        raise JoinRefused("the join token names no https:// endpoint")
    return token


def check_request(token_id: str, site: str) -> None:
    """JoinRefused unless a token id and site have the shapes `new_token` makes (fullmatch: no trailing newline)."""
    if not _ID.fullmatch(token_id):
        raise JoinRefused(f"join token id {token_id[:40]!r} is not 16 hex digits")
    try:
        check_label("site", site)
    except MeshfedError as exc:
        raise JoinRefused(str(exc)) from None


def redeem(entries: Mapping[str, Entry], token_id: str, secret: str, site: str, now: dt.datetime,
           by: str) -> dict[str, Entry]:
    """The store after using token `token_id` once; JoinRefused with the reason if it may not be used."""
    entry = entries.get(token_id)
    if entry is None or not hmac.compare_digest(entry.secret_sha256, _hash(secret)):
        raise JoinRefused("unknown join token (or a wrong secret)")
    if entry.used is not None:
        when = dt.datetime.fromtimestamp(entry.used, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        raise JoinRefused(f"join token {token_id} was used already, at {when} by {entry.used_by}")
    if now.timestamp() >= entry.expires:
        when = dt.datetime.fromtimestamp(entry.expires, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        raise JoinRefused(f"join token {token_id} expired at {when}")
    if site != entry.site:
        raise JoinRefused(f"join token {token_id} is for site {entry.site}, not {site}")
    return {**entries, token_id: replace(entry, used=now.timestamp(), used_by=by[:100])}


def entries_to_json(entries: Mapping[str, Entry]) -> bytes:
    """The token store file."""
    return json.dumps({k: {"site": e.site, "secretSha256": e.secret_sha256, "expires": e.expires,
                           "created": e.created, "used": e.used, "usedBy": e.used_by}
                       for k, e in sorted(entries.items())}, indent=1).encode()


def entries_from_json(data: bytes) -> dict[str, Entry]:
    """The token store file, read."""
    raw = json.loads(data) if data.strip() else {}
    return {k: Entry(v["site"], v["secretSha256"], float(v["expires"]), float(v["created"]),
                     None if v.get("used") is None else float(v["used"]), str(v.get("usedBy", "")))
            for k, v in raw.items()}


# ---------------------------------------------------------------- the CSR and the certificate


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh site key (ECDSA P-256), made on the machine that will hold it."""
    return ec.generate_private_key(ec.SECP256R1())


def site_csr(site: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The PEM CSR a joining VM sends for its site key (the CA sets every field of the certificate itself)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_csr(root: Authority, site: str, csr_pem: bytes, now: dt.datetime,
             lifetime: dt.timedelta = SITE_LIFETIME) -> x509.Certificate:
    """The intermediate of `site` for the key in a CSR; JoinRefused if the CSR is not acceptable."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid = csr.is_signature_valid
        public = csr.public_key()
    except (ValueError, TypeError, InvalidSignature):
        raise JoinRefused("the CSR does not parse") from None
    if not valid:
        raise JoinRefused("the CSR's signature does not match its key (its sender does not hold the key)")
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise JoinRefused("the CSR's key is not ECDSA P-256")
    return site_ca_cert(root, site, public, now, lifetime)


def check_issued(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, site: str, root: x509.Certificate) -> None:
    """What the VM checks of the certificate it got: its own key, its site, the root of its token."""
    if cert.public_key() != key.public_key():
        raise JoinRefused("the certificate returned is not for this VM's key")
    if site_of_ca(cert) != site:
        raise JoinRefused(f"the certificate returned is for site {site_of_ca(cert)}, not {site}")
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise JoinRefused("the certificate returned was not issued by the mesh root") from None


def endpoint_cert(root: Authority, hosts: list[str], now: dt.datetime,
                  lifetime: dt.timedelta = dt.timedelta(days=30)) -> Issued:
    """A server certificate for the signing endpoint (SPIFFE ID `spiffe://<td>/ca/join`, and its hosts)."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"spiffe://{trust_domain_of(root.cert)}/ca/join")]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfed"),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "join")]))
            .issuer_name(root.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(min(now + lifetime, root.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(root.key, hashes.SHA256()))
    return Issued(cert, key, ())


def root_fingerprint(root: x509.Certificate) -> str:
    """Hex SHA-256 of a certificate's DER."""
    return hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()

