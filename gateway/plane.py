"""The data plane of one site as the agent starts it: certificate, east-west gateway, egress."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import operator
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from federation.core.errors import ConfigError
from federation.core.records import Gateway
from federation.core.view import MeshView
from federation.pki.issuing import PkiError, load_site, site_of_ca
from federation.runtime.values import Value
from gateway.eastwest import EastWestGateway
from gateway.egress import BindFor, Egress
from gateway.settings import GatewaySettings
from gateway.tls import CertificateStore
from gateway.workers import GatewayWorkers

log = logging.getLogger(__name__)


class DataPlane:
    """Start with `start()`, feed `update(view)` after every registry change, stop with `close(grace)`.

    The site record the agent publishes should carry `ca_chain_pem` and `gateway_record()`.
    """

    def __init__(self, site: str, view: Callable[[], MeshView], settings: GatewaySettings,
                 registry: CollectorRegistry | None = None, bind_for: BindFor | None = None,
                 serve: bool = True) -> None:
        if not settings.ca_dir:
            raise ConfigError("gateway.ca_dir: required to run a gateway (the output of `meshfed ca site`)")
        try:
            site_ca = load_site(Path(settings.ca_dir))
        except PkiError as exc:
            raise ConfigError(f"gateway.ca_dir: {exc}") from None
        if site_of_ca(site_ca.cert) != site:
            raise ConfigError(f"gateway.ca_dir: the CA there belongs to site {site_of_ca(site_ca.cert)}, not {site}")
        self.site = site
        self.settings = settings
        registry = registry or CollectorRegistry()
        self.certs = CertificateStore(
            site_ca, settings.name, Path(settings.cert_dir) if settings.cert_dir else None,
            dt.timedelta(seconds=settings.cert_lifetime),
        )
        self.mesh = Value(view(), name="mesh view", same=operator.is_)
        self.gateway = (
            EastWestGateway(site, self.mesh, self.certs.server, self.certs.bundle, settings, registry)
            if serve else None
        )
        self.egress = Egress(site, view, self.certs.client, self.certs.bundle, settings, registry, bind_for)
        self.workers = (
            GatewayWorkers(site, settings, self.certs.chain_file, self.certs.key_file, self.certs.bundle_file,
                           settings.workers - 1)
            if serve and settings.workers > 1 else None
        )
        self._view = view
        self._renewer: asyncio.Task[None] | None = None

    @property
    def ca_chain_pem(self) -> str:
        """The site intermediate, for the `caChain` of the site record (peers verify against it)."""
        return self.certs.ca_chain_pem

    def gateway_record(self, address: str) -> Gateway:
        """This gateway as the site record lists it; `address` is what other networks dial."""
        port = self.gateway.address[1] if self.gateway is not None else self.settings.listen_port
        return Gateway(self.settings.name, address, port)

    async def start(self) -> None:
        """Listen (gateway, then egress) and start renewing the certificate at half its lifetime."""
        if self.gateway is not None:
            await self.gateway.start()
            if self.workers is not None:
                await self.workers.start(self.gateway.address[1], self._view())
                self.certs.on_renew = self.workers.reload
        await self.egress.start()
        self._renewer = asyncio.get_running_loop().create_task(self.certs.run(), name="gateway-cert-renewal")
        self._renewer.add_done_callback(_log_death)

    def update(self, view: MeshView) -> None:
        """A new registry view: egress listeners and worker processes follow it (the gateway reads it per request)."""
        self.mesh.set(view)
        self.egress.update(view)
        if self.workers is not None:
            self.workers.update(view)

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting, let streams finish for up to `grace` seconds, close everything."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        closing = [self.egress.close(grace)]
        if self.gateway is not None:
            closing.append(self.gateway.close(grace))
        if self.workers is not None:
            closing.append(self.workers.close(grace))
        await asyncio.gather(*closing)
        self.certs.close()


def _log_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("gateway certificate renewal has failed: %r", task.exception())
