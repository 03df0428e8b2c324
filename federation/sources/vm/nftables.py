"""The netfilter adapter of a VM site (the only module that runs `nft`): the egress capture rules.

Capture mode sends every TCP connection to the VIP ranges to one egress listener (Istio's VM capture):

    table inet meshfed {
      chain output {      # clients on this host
        type nat hook output priority -100; ip daddr 240.240.0.0/16 meta l4proto tcp redirect to :P }
      chain prerouting {  # LAN clients that route the VIP range through this host
        type nat hook prerouting priority dstnat; ...the same... }
      chain input {       # the capture port takes redirected connections only
        type filter hook input priority filter; tcp dport P ct status dnat accept; tcp dport P reject }
    }

The table is meshfed's own, so nothing touches the operator's rules. `install` replaces it in one
transaction (add, delete, define), so a start after a crash or a SIGKILL finds the old table and converges;
`remove` deletes it. The rules go to `nft -f -` as text (what `nft list table inet meshfed` shows back);
`installed` reads them with `nft -j`. No third-party Python client: the `nft` command of the nftables package.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from federation.core.errors import MeshfedError

log = logging.getLogger(__name__)

TABLE = "meshfed"
"""`table inet meshfed`: a table of our own, removed whole."""
NFT = "nft"
"""The command of Debian's nftables package."""
TIMEOUT = 10.0
"""Seconds one nft run may take (a few rules; anything longer is a stuck netlink socket)."""
_PROBE_PORT = 15001
"""Any port does for the dry run (`nft -c`) that tells whether the rules could be installed."""


class CaptureUnavailable(MeshfedError):
    """The capture rules cannot be installed here; `reason` says why in an operator's words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Installed:
    """What the meshfed table holds, as read back from the kernel."""

    port: int
    """The port the VIP ranges are redirected to (0 if no redirect rule was found)."""
    ranges: tuple[str, ...]
    """The VIP ranges redirected, in rule order (one per chain and range)."""
    chains: tuple[str, ...]
    """The chain names, sorted."""
    rules: int
    """Rules in the table: the same after every install, however often it ran."""


def ruleset(ranges: Sequence[str], port: int, table: str = TABLE) -> str:
    """The nft script that replaces `table inet <table>` with the capture rules for `ranges` -> `port`. Pure."""
    matches = []
    for text in ranges:
        net = ipaddress.ip_network(text, strict=False)
        family = "ip" if net.version == 4 else "ip6"
        matches.append(f"{family} daddr {net.with_prefixlen} meta l4proto tcp redirect to :{port}")
    redirects = "".join(f"\t\t{m}\n" for m in matches)
    return (
        f"add table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "\tchain output {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        f"{redirects}"
        "\t}\n"
        "\tchain prerouting {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"{redirects}"
        "\t}\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        f"\t\ttcp dport {port} ct status dnat accept\n"
        f"\t\ttcp dport {port} reject with tcp reset\n"
        "\t}\n"
        "}\n"
    )  # fmt: skip


def parse_table(document: Any) -> Installed:
    """`nft -j list table inet meshfed` output, summed up. Pure."""
    chains: list[str] = []
    ranges: list[str] = []
    port = 0
    rules = 0
    for item in document.get("nftables", ()) if isinstance(document, dict) else ():
        if "chain" in item:
            chains.append(str(item["chain"].get("name", "")))
        elif "rule" in item:
            rules += 1
            exprs = item["rule"].get("expr", ())
            redirect = next((e["redirect"] for e in exprs if isinstance(e, dict) and "redirect" in e), None)
            if redirect is None:
                continue
            port = int(redirect.get("port", 0)) if isinstance(redirect, dict) else 0
            for e in exprs:
                prefix = e.get("match", {}).get("right", {}) if isinstance(e, dict) else {}
                if isinstance(prefix, dict) and "prefix" in prefix:
                    ranges.append(f"{prefix['prefix']['addr']}/{prefix['prefix']['len']}")
    return Installed(port, tuple(ranges), tuple(sorted(chains)), rules)


class NftCapture:
    """Installs, reads back and removes the capture table; `netns` runs nft in a named namespace (tests)."""

    def __init__(self, ranges: Sequence[str], *, table: str = TABLE, netns: str | None = None,
                 nft: str = NFT) -> None:
        self.ranges = tuple(ranges)
        self.table = table
        self._netns = netns
        self._nft = nft
        self.port = 0
        """The port the installed rules redirect to; 0 while none are installed by this instance."""

    @property
    def name(self) -> str:
        """How an operator names the table: `inet meshfed`."""
        return f"inet {self.table}"

    async def probe(self) -> None:
        """Raise CaptureUnavailable unless the rules could be installed here (a dry run: changes nothing)."""
        await self._run(["-c", "-f", "-"], ruleset(self.ranges, _PROBE_PORT, self.table))

    async def install(self, port: int) -> None:
        """Make the table hold exactly the capture rules for `port`, replacing what a previous run left."""
        await self._run(["-f", "-"], ruleset(self.ranges, port, self.table))
        self.port = port
        log.info("egress capture: TCP to %s redirected to port %d (nft table %s)", ", ".join(self.ranges),
                 port, self.name)

    async def remove(self) -> bool:
        """Delete the table; False if there was none."""
        if await self.installed() is None:
            self.port = 0
            return False
        await self._run(["delete", "table", "inet", self.table])
        self.port = 0
        log.info("egress capture: removed nft table %s", self.name)
        return True

    async def installed(self) -> Installed | None:
        """What the table holds now, or None if there is none."""
        try:
            out = await self._run(["-j", "list", "table", "inet", self.table])
        except CaptureUnavailable as exc:
            if "No such file or directory" in exc.reason:
                return None
            raise
        try:
            return parse_table(json.loads(out))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CaptureUnavailable(f"nft printed a table meshfed cannot read: {exc}") from exc

    # ---------------------------------------------------------------- private

    async def _run(self, args: list[str], stdin: str | None = None) -> str:
        argv = [self._nft, *args]
        if self._netns:
            argv = ["ip", "netns", "exec", self._netns, *argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
        except FileNotFoundError:
            raise CaptureUnavailable(f"the {self._nft} command is not installed (Debian/Ubuntu: apt install "
                                     "nftables)") from None
        except PermissionError as exc:
            raise CaptureUnavailable(f"cannot run {self._nft}: {exc}") from None
        try:
            async with asyncio.timeout(TIMEOUT):
                out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise CaptureUnavailable(f"{self._nft} did not answer within {TIMEOUT:.0f}s") from None
        if proc.returncode != 0:
            raise CaptureUnavailable(_reason(err.decode(errors="replace")))
        return out.decode(errors="replace")


def _reason(stderr: str) -> str:
    """nft's complaint in an operator's words: permissions and a kernel without nf_tables named as such."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    first = next((line for line in lines if "Error" in line), lines[0] if lines else "nft failed")
    if "Operation not permitted" in stderr:
        return "no permission to change netfilter rules (needs root or CAP_NET_ADMIN)"
    if 'exec of "' in stderr:  # `ip netns exec` found no nft to run
        return f"the {NFT} command is not installed (Debian/Ubuntu: apt install nftables)"
    if "Protocol not supported" in stderr or "Address family not supported" in stderr:
        return f"the kernel has no nf_tables support ({first})"
    if "Could not process rule: No such file or directory" in stderr:
        return ("the kernel lacks nf_tables NAT or redirect support (modules nft_chain_nat, nft_redir; "
                f"load them or allow the agent to): {first}")
    return f"nft refused the capture rules: {first}"


def _env() -> dict[str, str]:
    # nft prints messages in the C locale so that the reasons above are recognised; PATH is kept (it may
    # point at the nft to use, and tests take nft away by taking it out).
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    env["LC_ALL"] = "C"
    return env
