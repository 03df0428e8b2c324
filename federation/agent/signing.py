"""The site's registry signer: issued from the site CA, kept in the state directory (0600), renewed at half life.

`seal` holds what the publisher signs with. A renewed or re-issued signer (the site CA was replaced) is
listed next to the one before it until that one expires, so records it signed keep verifying until the
publisher has re-signed them (it does so at once: their key id is no longer the current one).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

from federation.pki.issuing import Authority, PkiError, seconds_to_half_life
from federation.pki.signing import (
    SIGNER_CERT,
    SIGNER_KEY,
    SIGNER_LIFETIME,
    Signer,
    issue_registry_signer,
    load_signer,
    save_signer,
)
from federation.registry.sealing import Seal
from federation.runtime.values import Value

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
PREVIOUS = "previous-"


class SigningKeys:
    """The current registry signer of this site and the one before it."""

    def __init__(self, site_ca: Authority, directory: Path, *, lifetime: dt.timedelta = SIGNER_LIFETIME,
                 clock: Clock | None = None) -> None:
        self._dir = directory
        self._lifetime = lifetime
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.site_ca = site_ca
        self.current = self._load(SIGNER_CERT, SIGNER_KEY, fresh=True) or self._issue()
        self.previous = self._load(PREVIOUS + SIGNER_CERT, PREVIOUS + SIGNER_KEY, fresh=False)
        self.seal: Value[Seal | None] = Value(self._kit(), name="registry signer")
        """What the publisher signs with; replaced on every renewal."""

    def reissue(self, site_ca: Authority) -> None:
        """The site CA was replaced (a rotation): sign with a signer from the new one from now on."""
        self.site_ca = site_ca
        self._rotate()
        log.info("registry signer re-issued from the new site CA, valid until %s",
                 self.current.cert.not_valid_after_utc)

    def seconds_to_renewal(self) -> float:
        """Seconds until half the current signer's lifetime has passed."""
        return seconds_to_half_life(self.current.cert, self._clock())

    async def run(self, min_interval: float = 1.0) -> None:
        """Renew at half life, forever; a failed renewal is logged and tried again."""
        while True:
            await asyncio.sleep(max(min_interval, self.seconds_to_renewal()))
            try:
                self._rotate()
            except (OSError, PkiError, ValueError) as exc:
                log.error("registry signer renewal failed, retrying: %s", exc)
                continue
            log.info("registry signer renewed, valid until %s", self.current.cert.not_valid_after_utc)

    # -- private

    def _rotate(self) -> None:
        old = self.current
        self.current = self._issue()
        save_signer(self._dir, old, PREVIOUS + SIGNER_CERT, PREVIOUS + SIGNER_KEY)
        self.previous = old
        self.seal.set(self._kit())

    def _issue(self) -> Signer:
        signer = issue_registry_signer(self.site_ca, self._clock(), self._lifetime)
        save_signer(self._dir, signer, SIGNER_CERT, SIGNER_KEY)
        return signer

    def _load(self, cert: str, key: str, fresh: bool) -> Signer | None:
        """A stored signer of this site CA that is still valid (and, if `fresh`, before half life)."""
        if not (self._dir / cert).exists():
            return None
        try:
            signer = load_signer(self._dir, cert, key)
        except PkiError as exc:
            log.warning("registry signer in %s not usable (%s); issuing a new one", self._dir, exc)
            return None
        now = self._clock()
        c = signer.cert
        if signer.chain[:1] != (self.site_ca.cert,) or not c.not_valid_before_utc <= now < c.not_valid_after_utc:
            return None
        if fresh and now >= c.not_valid_before_utc + (c.not_valid_after_utc - c.not_valid_before_utc) / 2:
            return None
        return signer

    def _kit(self) -> Seal:
        signers = [self.current.cert_pem()]
        prev = self.previous
        if prev is not None and prev.cert.not_valid_after_utc > self._clock() and prev.cert != self.current.cert:
            signers.append(prev.cert_pem())
        return Seal(self.current.kid, tuple(signers), self.current.sign)
