"""The site's keys and the mesh's trust, loaded before anything else starts.

From `gateway.ca_dir` (the site CA, its root as the bootstrap trust bundle) and the state directory (the
registry signer, the trust bundle and revocation documents taken from the registry before, the agent's
instance id) it builds the record verifier the mirror uses, the signer the publisher uses, and the
`owner` the site record names. It writes the documents back as the verifier takes new ones, and picks
up a replaced site CA (a rotation) on SIGHUP or when the files change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

from federation.agent.settings import AgentSettings
from federation.agent.signing import SigningKeys
from federation.core.errors import ConfigError, RecordError
from federation.core.keys import Keys
from federation.core.meshdocs import Revocations, decode_revocations, decode_trust
from federation.core.verification import Mode
from federation.pki.issuing import SITE_CERT, Authority, PkiError, cert_pem, issued_by, load_site
from federation.pki.records import RecordVerifier
from federation.pki.verifying import TrustBundle
from federation.runtime.files import write_private
from federation.runtime.values import Derived, Readable, follow

log = logging.getLogger(__name__)

Task = tuple[str, Coroutine[Any, Any, None]]
TRUST_FILE = "trust/bundle.json"
REVOCATIONS_FILE = "trust/revocations.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class Identity:
    """What this site signs with and what it trusts. Without `gateway.ca_dir` (accept mode only) it has neither."""

    def __init__(self, settings: AgentSettings, site_ca: Authority | None) -> None:
        self.settings = settings
        self.site_ca = site_ca
        self.owner = instance_owner(settings.state_dir)
        """Which agent instance this is: the same after a restart, another on a copy of this machine."""
        self.verifier: RecordVerifier | None = None
        self.signing: SigningKeys | None = None
        self.reload = asyncio.Event()
        """Set (SIGHUP) to read `gateway.ca_dir` again now."""
        self.on_new_ca: list[Any] = []
        """Awaited with the new Authority when the site CA was replaced (the agent lists it in the site record,
        re-issues the registry signer and the gateway leaf from it, in that order)."""
        self._ca_stamp = self._stamp()
        if site_ca is None:
            return
        state = settings.state_dir
        bundle = _bootstrap(site_ca)
        trust_doc = _read(state / TRUST_FILE)
        if trust_doc is not None:
            bundle = _adopted(trust_doc, bundle)
        revocations, revocations_doc = Revocations(), _read(state / REVOCATIONS_FILE)
        if revocations_doc is not None:
            revocations = _revocations(revocations_doc)
        self.verifier = RecordVerifier(Keys(settings.registry.prefix), bundle, settings.registry.signatures,
                                       revocations=revocations, trust_document=trust_doc)
        self.verifier.revocations_document.set(revocations_doc)
        self.signing = SigningKeys(site_ca, state / "signing")

    @classmethod
    async def load(cls, settings: AgentSettings) -> Identity:
        """Read the site CA directory and the state directory; ConfigError naming what is wrong."""
        if not settings.gateway.ca_dir:
            if settings.registry.signatures is Mode.REQUIRE:
                raise ConfigError(f"{settings.source}: registry.signatures: require needs gateway.ca_dir")
            log.warning("no gateway.ca_dir: this agent neither signs its records nor verifies others' "
                        "(registry.signatures is accept: the registry is trusted as it is)")
            return cls(settings, None)
        try:
            site_ca = await asyncio.to_thread(load_site, Path(settings.gateway.ca_dir))
        except PkiError as exc:
            raise ConfigError(f"{settings.source}: gateway.ca_dir: {exc}") from None
        return await asyncio.to_thread(cls, settings, site_ca)

    @property
    def site_fields(self) -> Readable[Mapping[str, Any]] | None:
        """What the site record reports besides its own fields: the trust bundle this agent has taken."""
        trust = self.trust
        if trust is None:
            return None
        return Derived(lambda: {"trustSequence": trust.get().sequence}, trust, name="site record fields")

    @property
    def trust(self) -> Readable[TrustBundle] | None:
        """The roots in force (None without a site CA)."""
        return self.verifier.trust if self.verifier is not None else None

    def tasks(self) -> Iterator[Task]:
        """Signer renewal, keeping the trust documents, and watching the site CA directory."""
        if self.signing is not None:
            yield "registry-signer", self.signing.run()
        if self.verifier is not None:
            yield "trust-documents", self._keep_documents()
            yield "site-ca-reload", self._watch_ca()

    # -- private

    async def _keep_documents(self) -> None:
        """Write every trust bundle and revocation document the verifier takes into the state directory."""
        assert self.verifier is not None
        state = self.settings.state_dir
        trust, revoked = self.verifier.trust_document, self.verifier.revocations_document
        written: dict[str, bytes | None] = {TRUST_FILE: trust.get(), REVOCATIONS_FILE: revoked.get()}
        async for _ in follow(trust, revoked):
            for name, value in ((TRUST_FILE, trust.get()), (REVOCATIONS_FILE, revoked.get())):
                if value is not None and value != written.get(name):
                    (state / name).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    await asyncio.to_thread(write_private, state / name, value)
                    written[name] = value
            bundle = self.verifier.trust.get()
            if self.site_ca is not None and not _chains_to(self.site_ca, bundle):
                log.error("the trust bundle in force (%d) no longer holds the root of this site's CA: peers will "
                          "refuse this site's gateway and records; install an intermediate from a current root",
                          bundle.sequence)

    async def _watch_ca(self) -> None:
        """Read the site CA again on SIGHUP or when its files change (`gateway.ca_reload_interval`)."""
        interval = self.settings.gateway.ca_reload_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval if interval > 0 else None):
                    await self.reload.wait()
            self.reload.clear()
            stamp = self._stamp()
            if stamp == self._ca_stamp:
                continue
            try:
                new = await asyncio.to_thread(load_site, Path(self.settings.gateway.ca_dir))
            except PkiError as exc:
                log.error("gateway.ca_dir changed but cannot be read (keeping the CA in use): %s", exc)
                continue
            self._ca_stamp = stamp
            if self.site_ca is not None and new.cert == self.site_ca.cert:
                continue
            log.warning("site CA in %s replaced: now %s, valid until %s", self.settings.gateway.ca_dir,
                        new.cert.subject.rfc4514_string(), new.cert.not_valid_after_utc)
            self.site_ca = new
            for callback in self.on_new_ca:
                await callback(new)

    def _stamp(self) -> tuple[int, int] | None:
        if not self.settings.gateway.ca_dir:
            return None
        try:
            st = (Path(self.settings.gateway.ca_dir) / SITE_CERT).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)


def instance_owner(state_dir: Path) -> str:
    """A stable id for this agent on this boot of this machine: a token kept in the state directory, mixed
    with the kernel's boot id, which a copied disk image does not carry over to the machine it boots on."""
    path = state_dir / "instance"
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    if not token:
        token = secrets.token_hex(16)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, token.encode() + b"\n")
    try:
        boot = BOOT_ID.read_text().strip()
    except OSError:
        boot = ""
    boot = os.environ.get("MESHFED_BOOT_ID", boot)
    return hashlib.sha256(f"{token}/{boot}".encode()).hexdigest()[:16]


def _bootstrap(site_ca: Authority) -> TrustBundle:
    """The root that issued the site CA (`meshfed ca site` writes it after the intermediate in site.crt)."""
    root = site_ca.parents[-1] if site_ca.parents else site_ca.cert
    return TrustBundle.from_pem(cert_pem(root))


def _adopted(document: bytes, bootstrap: TrustBundle) -> TrustBundle:
    """The bundle of a document taken before (it was verified then); the bootstrap one if it is unreadable."""
    from federation.core import envelope

    try:
        doc = decode_trust(envelope.split(document).body)
        bundle = TrustBundle.from_pem("".join(doc.roots).encode(), sequence=doc.sequence)
    except (RecordError, ValueError) as exc:
        log.warning("stored trust bundle document unreadable (%s); using the site CA's root", exc)
        return bootstrap
    if bundle.trust_domain != bootstrap.trust_domain:
        log.warning("stored trust bundle is for trust domain %s, not %s; using the site CA's root",
                    bundle.trust_domain, bootstrap.trust_domain)
        return bootstrap
    return bundle


def _revocations(document: bytes) -> Revocations:
    from federation.core import envelope

    try:
        return decode_revocations(envelope.split(document).body)
    except RecordError as exc:
        log.warning("stored revocation list unreadable (%s); starting with none", exc)
        return Revocations()


def _chains_to(site_ca: Authority, bundle: TrustBundle) -> bool:
    return any(issued_by(site_ca.cert, r) for r in bundle.roots)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
