"""One data-path process: `echo HOST PORT`, `gateway SITE CA_DIR VIEW HOST [PORT]`, `egress ...`, or
`capture SITE CA_DIR VIEW HOST VIPS_JSON [auto|on|off [ACCESS_JSON]]` (an egress in capture mode with its nft
rules, as a VM agent runs it, under the access state ACCESS_JSON (`state_document`) if given; prints
`STATS {...}` with its connection counters when stopped).

Used by the netns test and the tunnel benchmark.

Runs until stdin closes (the test holds the pipe), printing `READY <port>` once listening.
The view file holds one line of `gateway.workers.encode_view`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import cast

from federation.core.policy.access import AccessState, state_from_document
from federation.core.view import MeshView
from federation.pki.issuing import load_site
from federation.runtime.values import Value
from federation.sources.vm.capture import EgressCapture
from gateway.balancing import Placement
from gateway.eastwest import EastWestGateway
from gateway.egress import Egress
from gateway.settings import GatewaySettings
from gateway.tls import CertificateStore
from gateway.workers import decode_view, encode_view


def dump_view(view: MeshView) -> str:
    """The text a node reads back with `load_view`."""
    return encode_view(view).decode()


def load_view(path: Path) -> MeshView:
    return decode_view(path.read_bytes())


class _Echo(asyncio.Protocol):
    """Echoes every byte and answers a half-close with one (a Protocol: fast enough to benchmark through)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.write_eof()
        return True


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def main(argv: list[str]) -> None:
    role = argv[0]
    if role == "echo":
        server = await asyncio.get_running_loop().create_server(_Echo, argv[1], int(argv[2]), backlog=1024)
        print("READY", server.sockets[0].getsockname()[1], flush=True)
        await _until_stdin_closes()
        server.close()
        return
    site, ca_dir, view_file, host = argv[1], Path(argv[2]), Path(argv[3]), argv[4]
    port = int(argv[5]) if len(argv) > 5 and argv[0] != "capture" else 15443
    view = load_view(view_file)
    store = CertificateStore(load_site(ca_dir), "gw")
    settings = GatewaySettings(listen_address=host, listen_port=port, egress_address=host)
    if role == "gateway":
        gw = EastWestGateway(site, Value(view), store.server, store.bundle, settings)
        await gw.start()
        print("READY", gw.address[1], flush=True)
        await _until_stdin_closes()
        await gw.close()
    elif role == "capture":
        access = state_from_document(json.loads(argv[7])) if len(argv) > 7 else AccessState()
        await _capture(site, store, view, settings, json.loads(argv[5]), argv[6] if len(argv) > 6 else "on", access)
    else:
        eg = Egress(site, Value(view), store.client, store.bundle, settings)
        await eg.start()
        ports = {"/".join(k): v[1] for k, v in eg.listeners().items()}
        print("READY", json.dumps(ports), flush=True)
        await _until_stdin_closes()
        await eg.close()
    store.close()


async def _capture(site: str, store: CertificateStore, view: MeshView, settings: GatewaySettings,
                   vips: dict[str, list[str]], mode: str, access: AccessState) -> None:
    table = {tuple(k.split("/")): tuple(v) for k, v in vips.items()}
    capture = EgressCapture(mode, ("240.240.0.0/16", "fd6d:6573:6866:6564::/64"))
    on = await capture.decide()
    placement = Placement(fallback=(settings.egress_address, 0), vips=table)  # type: ignore[arg-type]
    eg = Egress(site, Value(view), store.client, store.bundle, settings, placement=Value(placement),
                local_services=True, capture=capture.bind if on else None, access=Value(access))
    await eg.start()
    if eg.capture is not None:
        await capture.install(eg.capture.address[1])
    ports = {"/".join(k): v[1] for k, v in eg.listeners().items()}
    out = {"mode": eg.mode, "reason": capture.reason, "listeners": ports,
           "capture": eg.capture.address[1] if eg.capture is not None else None}
    print("READY", json.dumps(out), flush=True)
    await _until_stdin_closes()
    await eg.close()
    await capture.close()
    counts = {s.labels["result"]: s.value for s in eg.metrics.connections.collect()[0].samples
              if s.name.endswith("_total")}
    print("STATS", json.dumps(counts), flush=True)


if __name__ == "__main__":
    if os.environ.get("MESHFED_UVLOOP") == "1":
        import uvloop

        uvloop.install()
    asyncio.run(main(sys.argv[1:]))
