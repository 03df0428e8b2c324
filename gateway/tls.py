"""TLS 1.3 mutual-auth contexts for tunnels, and the gateway certificate that renews itself into them."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import datetime as dt
import logging
import operator
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from federation.pki.issuing import Authority, Issued, cert_pem, issue_gateway, seconds_to_half_life, site_of_ca
from federation.pki.verifying import TrustBundle
from federation.runtime.files import write_private
from federation.runtime.values import Readable, Value, follow

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]

Bundle = TrustBundle | Readable[TrustBundle]
"""The roots a gateway verifies peers against: fixed, or a holder that follows the registry's trust bundle."""


def current(bundle: Bundle) -> TrustBundle:
    """The roots in force now."""
    return bundle if isinstance(bundle, TrustBundle) else bundle.get()


def server_context(chain: Path, key: Path, bundle: Path) -> AlertingContext:
    """A server context: TLS 1.3 only, a client certificate verifying to the mesh root required.

    A refused handshake ends with the TLS alert OpenSSL chose (see `AlertingContext`).
    """
    ctx = AlertingContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, chain, key, bundle)
    return ctx


AlertSink = Callable[[bytes], object]
_alert_sink: contextvars.ContextVar[AlertSink | None] = contextvars.ContextVar("meshfed_alert_sink", default=None)


def send_alerts_to(sink: AlertSink) -> None:
    """Handshakes that the current task starts write a failed handshake's alert with `sink(bytes)`.

    Set it on the raw connection before `start_tls` / `connect_accepted_socket`: asyncio closes the
    transport on a handshake error without writing what OpenSSL left in the outgoing buffer, which
    is exactly the alert (certificate_required, unknown_ca, bad_certificate, ...), so the peer
    would see a bare EOF. A task's context is its own, so the sink never reaches another connection.
    """
    _alert_sink.set(sink)


class AlertingObject(ssl.SSLObject):
    """An SSLObject that, when its handshake fails, hands the bytes OpenSSL wrote last (the alert) to a sink."""

    _outgoing: ssl.MemoryBIO | None = None
    _sink: AlertSink | None = None

    def alert_to(self, outgoing: ssl.MemoryBIO, sink: AlertSink | None) -> None:
        """Where the alert is read from (the outgoing BIO) and where it goes."""
        self._outgoing = outgoing
        self._sink = sink

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError):
            raise  # not a verdict: the handshake goes on (asyncio's SSLAgainErrors)
        except ssl.SSLError:
            self._flush()
            raise

    def _flush(self) -> None:
        if self._outgoing is None or self._sink is None:
            return
        data = self._outgoing.read()
        if data:
            try:
                self._sink(data)
            except OSError as exc:  # the peer is already gone: nothing to tell it
                log.debug("TLS alert not sent: %s", exc)


class AlertingContext(ssl.SSLContext):
    """A server context whose handshakes send their alert before the connection closes (`send_alerts_to`)."""

    sslobject_class = AlertingObject

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None
                 ) -> ssl.SSLObject:
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if isinstance(obj, AlertingObject):
            obj.alert_to(outgoing, _alert_sink.get())
        return obj


def client_context(chain: Path, key: Path, bundle: Path) -> ResumingContext:
    """A client context presenting our gateway certificate and requiring a mesh server certificate.

    Host names are not checked: the peer's SPIFFE ID is, by `federation.pki.verifying.verify_peer`.
    """
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sessions = collections.OrderedDict()
    ctx.check_hostname = False
    _harden(ctx, chain, key, bundle)
    return ctx


SESSION_REFRESH = 300.0
"""Seconds a kept TLS session is offered before a newer one is read (OpenSSL's tickets live 2 h)."""


class ResumingContext(ssl.SSLContext):
    """A client context that offers the last TLS session it got from the same server name (resumption)."""

    sessions: collections.OrderedDict[str, ssl.SSLSession]

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None
                 ) -> ssl.SSLObject:
        if session is None and isinstance(server_hostname, str):
            session = self.sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def wants(self, server_hostname: str, resumed: bool = False) -> bool:
        """True if a session for `server_hostname` should be read now: none is kept, or the kept one is
        older than `SESSION_REFRESH`. Not from a `resumed` handshake when none is kept: the kept one was
        dropped since that handshake began (a renewal, a rejected peer), and its certificates with it.

        Reading `SSLObject.session` leaks a copy of the session on CPython before 3.12.7/3.13.1 (about
        5 KiB each, gh-116810), and costs 0.3 ms anyway; one TLS 1.3 ticket resumes many handshakes, so
        one read per server name every few minutes keeps resumption at no measurable cost.
        """
        session = self.sessions.get(server_hostname)
        if session is None:
            return not resumed
        return time.time() - session.time > SESSION_REFRESH

    def forget(self, server_hostname: str) -> None:
        """Drop the session kept for `server_hostname`: the next handshake with it is a full one."""
        self.sessions.pop(server_hostname, None)

    def remember(self, server_hostname: str, session: ssl.SSLSession | None) -> None:
        """Keep `session` for the next handshake with `server_hostname` (bounded)."""
        if session is None or not session.has_ticket:
            return
        self.sessions.pop(server_hostname, None)
        self.sessions[server_hostname] = session
        while len(self.sessions) > 1024:
            self.sessions.popitem(last=False)


def _harden(ctx: ssl.SSLContext, chain: Path, key: Path, bundle: Path) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(bundle))
    ctx.load_cert_chain(str(chain), str(key))


class CertificateStore:
    """The gateway's leaf: issued from the site CA, written 0600, renewed at half life into live contexts.

    Renewal calls `load_cert_chain` on the contexts in use, which changes the certificate offered by
    new handshakes only; established connections keep theirs.
    """

    def __init__(self, site_ca: Authority, gateway: str, directory: Path | None = None,
                 lifetime: dt.timedelta = dt.timedelta(hours=24), clock: Clock | None = None,
                 trust: Readable[TrustBundle] | None = None) -> None:
        self.site_ca = site_ca
        self.previous_ca: Authority | None = None
        """The intermediate used before the last reload: listed in the site record while it is valid, so
        that peers still verify the leaves it issued (tunnels open before, other worker processes)."""
        self.site = site_of_ca(site_ca.cert)
        self.gateway = gateway
        self.lifetime = lifetime
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="meshfed-gw-")
            directory = Path(self._tmp.name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.chain_file = directory / "gateway.crt"
        self.key_file = directory / "gateway.key"
        self.bundle_file = directory / "trust-bundle.pem"
        root = site_ca.parents[-1] if site_ca.parents else site_ca.cert
        self.trust: Readable[TrustBundle] = trust or Value(TrustBundle.from_pem(cert_pem(root)), name="trust bundle")
        """The roots peers must chain to: the site CA's root, or the registry's trust bundle as it changes."""
        self._applied = self.trust.get()
        self.bundle_file.write_bytes(self._applied.pem())
        self.renewals = 0
        self.current: Value[Issued] = Value(self._issue(), name="gateway certificate", same=operator.is_)
        """The leaf in use; a renewal sets a new one."""
        self.changed: Value[int] = Value(0, name="gateway certificate files")
        """Grows whenever the leaf or the trust bundle file changed: worker processes reload both."""
        self.chain: Value[str] = Value(self._chain_pem(), name="site CA chain")
        """What the site record's `ca_chain` carries: changes when the site CA is reloaded."""
        self.server = server_context(self.chain_file, self.key_file, self.bundle_file)
        self.client = client_context(self.chain_file, self.key_file, self.bundle_file)

    @property
    def bundle(self) -> TrustBundle:
        """The roots in force now."""
        return self.trust.get()

    @property
    def ca_chain_pem(self) -> str:
        """What the site record's `ca_chain` carries: the site intermediate (and the one before it while it
        is valid), for peers to verify against."""
        return self.chain.get()

    def stage_site_ca(self, site_ca: Authority) -> None:
        """Announce a new intermediate of this site (the site record lists it next to the current one);
        `switch_site_ca` later issues the leaf from it, once peers have had time to see the record."""
        if site_of_ca(site_ca.cert) != self.site:
            raise ValueError(f"the new CA belongs to site {site_of_ca(site_ca.cert)}, not {self.site}")
        self.previous_ca, self.site_ca = self.site_ca, site_ca
        self.chain.set(self._chain_pem(staged=True))

    def switch_site_ca(self) -> Issued:
        """Issue the leaf from the intermediate staged last."""
        issued = self.renew()
        self.chain.set(self._chain_pem())
        return issued

    def apply_trust(self) -> bool:
        """Load the roots of the trust bundle in force into the TLS contexts; True if they changed.

        OpenSSL can add roots to a live context but not remove them: a retired root is refused after the
        handshake instead, by `verify_peer`, which checks against the bundle in force (docs/security.md).
        """
        bundle = self.trust.get()
        if bundle is self._applied:
            return False
        self._applied = bundle
        self.bundle_file.write_bytes(bundle.pem())
        for ctx in (self.server, self.client):
            ctx.load_verify_locations(cadata=bundle.pem().decode())
        self.changed.set(self.changed.get() + 1)
        return True

    async def follow_trust(self) -> None:
        """Apply every new trust bundle, until cancelled."""
        async for _ in follow(self.trust):
            if self.apply_trust():
                log.info("trust bundle %d applied: %d root(s)", self._applied.sequence, len(self._applied.roots))

    @property
    def issued(self) -> Issued:
        """The leaf in use."""
        return self.current.get()

    def renew(self) -> Issued:
        """Issue a fresh leaf now and load it into both contexts for the handshakes that follow."""
        issued = self._issue()
        for ctx in (self.server, self.client):
            ctx.load_cert_chain(str(self.chain_file), str(self.key_file))
        # A resumed session carries the certificates of the handshake it came from: without this the peers'
        # gateways would go on seeing the old leaf (and end those tunnels at its notAfter).
        self.client.sessions.clear()
        self.renewals += 1
        self.current.set(issued)
        self.changed.set(self.changed.get() + 1)
        return issued

    def seconds_to_renewal(self) -> float:
        """Seconds until half the current leaf's lifetime has passed (0 if already past)."""
        return seconds_to_half_life(self.issued.cert, self._clock())

    async def run(self, min_interval: float = 1.0) -> None:
        """Renew at half life, forever; a failed renewal is logged and retried after `min_interval`."""
        while True:
            await asyncio.sleep(max(min_interval, self.seconds_to_renewal()))
            try:
                issued = self.renew()
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.error("gateway certificate renewal failed, retrying: %s", exc)
                continue
            log.info("gateway certificate renewed, valid until %s", issued.cert.not_valid_after_utc)

    def close(self) -> None:
        """Remove the private directory, if the store made one."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _chain_pem(self, staged: bool = False) -> str:
        certs = [self.site_ca.cert]
        previous = self.previous_ca
        if previous is not None and previous.cert != self.site_ca.cert and (
                staged or previous.cert.not_valid_after_utc > self._clock()):
            certs.append(previous.cert)
        return cert_pem(*certs).decode()

    def _issue(self) -> Issued:
        issued = issue_gateway(self.site_ca, self.gateway, self._clock(), self.lifetime)
        write_private(self.key_file, issued.key_pem())
        write_private(self.chain_file, issued.chain_pem())
        return issued

