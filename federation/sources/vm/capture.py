"""Whether a VM's egress captures the VIP range into one listener (`vm.egress_capture`), and its rules' lifetime.

    capture = EgressCapture(settings.vm.egress_capture, settings.dns.vip_ranges, unavailable=precondition(...))
    if await capture.decide():           # once, at start: says once why not, or fails the start for "on"
        egress = Egress(..., capture=capture.bind)
        await egress.start()
        await capture.install(egress.capture.address[1])
    ...
    await capture.close()                # the rules go with the agent

A start that does not capture still removes a table a killed capture-mode agent left behind: its rules
would send VIP traffic to a port nobody listens on, past the per-port listeners.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

from federation.core.errors import ConfigError
from federation.sources.vm.nftables import NFT, CaptureUnavailable, NftCapture
from federation.sources.vm.settings import VmSettings

log = logging.getLogger(__name__)


def precondition(vm: VmSettings, dns_enabled: bool, egress: bool) -> str:
    """Why capture cannot run whatever the host allows (empty if it could): it needs VIPs and an egress."""
    if not egress:
        return "there is no egress (gateway.ca_dir is not set)"
    if not vm.vip_interface:
        return "VIPs are off (vm.vip_interface is empty)"
    if not dns_enabled:
        return "no VIPs are allocated (dns.enabled is false)"
    return ""


def ipv6_available() -> bool:
    """Whether this host can open IPv6 sockets (a kernel booted with ipv6.disable=1 cannot)."""
    if not socket.has_ipv6:
        return False
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError as exc:
        if exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            return False
        raise
    return True


class EgressCapture:
    """The egress mode of one VM agent and, in capture mode, the netfilter rules that feed its listener."""

    def __init__(self, setting: str, ranges: Sequence[str], *, unavailable: str = "", where: str = "",
                 netns: str | None = None, nft: str = NFT) -> None:
        self.setting = setting
        self.ipv6 = ipv6_available()
        """IPv6 VIPs are captured (and answered in DNS) only where the host has IPv6."""
        kept = [r for r in ranges if self.ipv6 or ipaddress.ip_network(r, strict=False).version == 4]
        self.rules = NftCapture(kept, netns=netns, nft=nft)
        self.reason = unavailable
        """Why the egress runs a listener per port (empty in capture mode)."""
        self.active = False
        """True once `decide()` chose capture mode."""
        self._where = where
        self._precondition = bool(unavailable)

    @property
    def bind(self) -> tuple[str, int]:
        """Where the capture listener binds: every address (redirected LAN clients arrive on the LAN's), a
        port of the kernel's choosing (the rules name it); the rules' input chain refuses anything not redirected."""
        return ("::" if self.ipv6 else "0.0.0.0", 0)  # noqa: S104 - see above

    @property
    def captured(self) -> tuple[str, ...]:
        """The ranges redirected to the listener (VIPs, then headless endpoints' addresses); none unless active."""
        return self.rules.ranges if self.active else ()

    @property
    def mode(self) -> str:
        """"capture" or "listeners"."""
        return "capture" if self.active else "listeners"

    async def decide(self) -> bool:
        """Choose the mode, once at start: True for capture. Logs once why not; ConfigError for "on" when impossible."""
        if self.setting == "off":
            self.reason = "vm.egress_capture is off"
        elif not self.reason:
            try:
                await self.rules.probe()
            except CaptureUnavailable as exc:
                self.reason = exc.reason
        if not self.reason:
            self.active = True
            return True
        if self.setting == "on":
            raise ConfigError(f"{self._where + ': ' if self._where else ''}vm.egress_capture: on, but capture is "
                              f"impossible: {self.reason}")
        if self.setting == "auto":
            # Said once, at start; a host that cannot capture is worth a warning, a configuration that does
            # not want VIPs only a note.
            log.log(logging.INFO if self._precondition else logging.WARNING,
                    "egress capture is off: %s; the egress listens on a socket per service port instead", self.reason)
        if not self._precondition:
            await self._remove_leftovers()
        return False

    async def install(self, port: int) -> None:
        """Redirect the VIP ranges to `port` (replacing a previous run's rules); raises CaptureUnavailable."""
        await self.rules.install(port)

    async def close(self) -> None:
        """Remove the rules this agent installed."""
        if self.rules.port:
            try:
                await self.rules.remove()
            except CaptureUnavailable as exc:
                log.error("egress capture: could not remove nft table %s: %s", self.rules.name, exc.reason)

    def status(self, listen: tuple[str, int] | None) -> dict[str, Any]:
        """The `egress` part of /status (`listen`: the capture listener's address, if any)."""
        return {
            "mode": self.mode,
            "capture": None if not self.active or listen is None else _host_port(*listen),
            "ranges": list(self.rules.ranges) if self.active else [],
            "table": f"{self.rules.name}" if self.active and self.rules.port else None,
            "reason": self.reason or None,
        }  # fmt: skip

    async def _remove_leftovers(self) -> None:
        try:
            if await self.rules.remove():
                log.warning("egress capture: removed nft table %s that an earlier run left behind", self.rules.name)
        except CaptureUnavailable:
            pass  # no nft, or no permission: then there were no rules of ours either


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
