"""Certificates for etcd over TLS: a server certificate for etcd and a client certificate per site.

Issued by the mesh root CA. The client certificate's common name is the etcd user name, so etcd RBAC
(`--client-cert-auth` with auth enabled) can give each site write access to its own prefix only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from federation.pki.issuing import Authority, Issued
from federation.pki.servercerts import SERVER_CERT_LIFETIME, issue_client, issue_server

ETCD_CERT_LIFETIME = SERVER_CERT_LIFETIME
"""etcd certificates are not rotated by the agent; a year, renewed with the same command."""


def issue_etcd_server(ca: Authority, hosts: Sequence[str], now: dt.datetime,
                      lifetime: dt.timedelta = ETCD_CERT_LIFETIME) -> Issued:
    """A server certificate for etcd, valid for each of `hosts` (IP addresses or DNS names)."""
    return issue_server(ca, "etcd", hosts, now, lifetime)


def issue_etcd_client(ca: Authority, user: str, now: dt.datetime,
                      lifetime: dt.timedelta = ETCD_CERT_LIFETIME) -> Issued:
    """A client certificate whose common name is the etcd user `user` (e.g. `site-east`)."""
    return issue_client(ca, user, now, lifetime=lifetime)
