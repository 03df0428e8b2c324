"""Certificates for etcd over TLS: a server certificate for etcd and a client certificate per site.

Issued by the mesh root CA. The client certificate's common name is the etcd user name, so etcd RBAC
(`--client-cert-auth` with auth enabled) can give each site write access to its own prefix only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.pki.issuing import Authority, Issued

ETCD_CERT_LIFETIME = dt.timedelta(days=365)
"""etcd certificates are not rotated by the agent; a year, renewed with the same command."""


def issue_etcd_server(ca: Authority, hosts: Sequence[str], now: dt.datetime,
                      lifetime: dt.timedelta = ETCD_CERT_LIFETIME) -> Issued:
    """A server certificate for etcd, valid for each of `hosts` (IP addresses or DNS names)."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return _issue(ca, "etcd", names, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                  now, lifetime)


def issue_etcd_client(ca: Authority, user: str, now: dt.datetime,
                      lifetime: dt.timedelta = ETCD_CERT_LIFETIME) -> Issued:
    """A client certificate whose common name is the etcd user `user` (e.g. `site-east`)."""
    return _issue(ca, user, [], [ExtendedKeyUsageOID.CLIENT_AUTH], now, lifetime)


def _issue(ca: Authority, common_name: str, names: list[x509.GeneralName],
           usages: list[x509.ObjectIdentifier], now: dt.datetime, lifetime: dt.timedelta) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshfed"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + lifetime, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key, ca.parents)
