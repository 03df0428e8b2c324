"""TLS certificates outside the mesh identity: a plain CA, server certificates and client certificates.

For servers that are not gateways (etcd, the development Kubernetes API server): the server
certificate names hosts (IP or DNS SANs); a client certificate's common name is the user name and
its organisations are the groups, as etcd and the Kubernetes API server read them. Pure: time comes in.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.pki.issuing import BACKDATE, Authority, Issued

SERVER_CERT_LIFETIME = dt.timedelta(days=365)
"""Such certificates are not rotated by the agent; a year, renewed with the same command."""
CA_LIFETIME = dt.timedelta(days=3650)


def new_ca(common_name: str, now: dt.datetime, lifetime: dt.timedelta = CA_LIFETIME) -> Authority:
    """A self-signed ECDSA P-256 CA that signs server and client certificates (no mesh identity)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfed"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue_server(ca: Authority, common_name: str, hosts: Sequence[str], now: dt.datetime,
                 lifetime: dt.timedelta = SERVER_CERT_LIFETIME) -> Issued:
    """A server certificate valid for each of `hosts` (IP addresses or DNS names), also usable as a client."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return _issue(ca, common_name, (), names, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                  now, lifetime)


def issue_client(ca: Authority, user: str, now: dt.datetime, groups: Sequence[str] = (),
                 lifetime: dt.timedelta = SERVER_CERT_LIFETIME) -> Issued:
    """A client certificate for `user` (the common name) in `groups` (the organisations)."""
    return _issue(ca, user, groups, [], [ExtendedKeyUsageOID.CLIENT_AUTH], now, lifetime)


def _issue(ca: Authority, common_name: str, groups: Sequence[str], names: list[x509.GeneralName],
           usages: list[x509.ObjectIdentifier], now: dt.datetime, lifetime: dt.timedelta) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups or ("meshfed",)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([*subject, x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + lifetime, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key, ca.parents)
