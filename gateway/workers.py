"""Extra east-west gateway processes sharing the listening port (SO_REUSEPORT) when `workers` > 1.

The agent's process runs the first gateway; `GatewayWorkers` starts `workers - 1` more with
`python -m gateway.workers`; its `run()` follows the mesh view and the issued certificate and sends
each worker what a gateway reads of the view (every site record, and this site's own exports: a gateway
admits streams to its own site only) as JSON lines on its stdin: the whole of it at start, then after
every change only the records that changed, so a registry change costs the workers in proportion to
the change (and `reload` after a renewal); closing stdin stops them. A worker's metrics stay in that
worker. The kernel spreads new connections over all processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import operator
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from federation.core.codec import decode_export, decode_site, encode_export, encode_site
from federation.core.keys import ServiceKey, SiteKey
from federation.core.policy.access import AccessState, state_document, state_from_document
from federation.core.view import Changes, MeshView, ServiceId
from federation.pki.verifying import TrustBundle
from federation.runtime.values import Readable, Value, follow
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def encode_view(view: MeshView, site: str | None = None) -> bytes:
    """One JSON line holding every site record of `view` and its export records (the registry codec): all of
    them, or with `site` only that site's."""
    exports = view.exports.values() if site is None else (e for e in view.exports.values() if e.site == site)
    return json.dumps({
        "sites": [encode_site(s).decode() for s in view.sites.values()],
        "exports": [encode_export(e).decode() for e in exports],
    }).encode() + b"\n"


def encode_delta(view: MeshView, site: str, changes: Changes, held: set[ServiceId]) -> bytes | None:
    """One JSON line with what `changes` changed of what a worker holds (site records, `site`'s own exports in
    `held`, which it updates), each record or null for gone; None when nothing a worker holds changed."""
    sites = {name: _text(encode_site, view.sites.get(name)) for name in sorted(changes.sites)}
    exports: dict[str, str | None] = {}
    for service in sorted(changes.services):
        export = view.exports.get((site, *service))
        if export is not None:
            held.add(service)
        elif service in held:
            held.discard(service)
        else:
            continue  # another site's service: a worker does not hold it
        exports["/".join(service)] = _text(encode_export, export)
    if not sites and not exports:
        return None
    return json.dumps({"delta": {"sites": sites, "exports": exports}}).encode() + b"\n"


def apply_delta(view: MeshView, site: str, line: bytes) -> MeshView:
    """The view a worker holds after a line of `encode_delta` (records validated again)."""
    delta = json.loads(line)["delta"]
    sites, exports = dict(view.sites), dict(view.exports)
    for name, raw in delta["sites"].items():
        if raw is None:
            sites.pop(name, None)
        else:
            sites[name] = decode_site(SiteKey(name), raw.encode())
    for service, raw in delta["exports"].items():
        ns, name = service.split("/", 1)
        if raw is None:
            exports.pop((site, ns, name), None)
        else:
            exports[(site, ns, name)] = decode_export(ServiceKey(site, ns, name), raw.encode())
    return MeshView(sites=sites, exports=exports)


def _text(encode: Callable[[Any], bytes], record: object | None) -> str | None:
    return None if record is None else encode(record).decode()


def decode_view(line: bytes) -> MeshView:
    """The MeshView that `encode_view` wrote (records validated again)."""
    data = json.loads(line)
    sites = [decode_site(SiteKey(json.loads(s)["name"]), s.encode()) for s in data["sites"]]
    exports = []
    for raw in data["exports"]:
        obj = json.loads(raw)
        exports.append(decode_export(ServiceKey(obj["site"], obj["namespace"], obj["name"]), raw.encode()))
    return MeshView(sites={s.name: s for s in sites},
                    exports={(e.site, e.namespace, e.name): e for e in exports})


class GatewayWorkers:
    """`count` worker processes serving the same port as the gateway in this process."""

    def __init__(self, site: str, settings: GatewaySettings, chain: Path, key: Path, bundle: Path,
                 count: int, mesh: Readable[MeshView], certificate: Readable[object],
                 access: Readable[AccessState] | None = None) -> None:
        self.site = site
        self.settings = settings
        self.files = (chain, key, bundle)
        self.count = count
        self.mesh = mesh
        self.certificate = certificate
        """Changes when the certificate files were renewed: the workers then reload them."""
        self.access: Readable[AccessState] = access or Value(AccessState(), name="no access policies")
        """The access state the workers enforce (sent as a JSON line after every change)."""
        self._procs: list[asyncio.subprocess.Process] = []
        self._sent = mesh.get()
        self._held: set[ServiceId] = set()
        """This site's services whose export the workers hold."""

    async def run(self) -> None:
        """Send what changed of every new mesh view to the workers, and `reload` after every renewal, until
        cancelled."""
        sent_view, sent_cert, sent_access = self._sent, self.certificate.get(), self.access.get()
        async for _ in follow(self.mesh, self.certificate, self.access):
            if self.access.get() is not sent_access:
                sent_access = self.access.get()
                self._send(_access_line(sent_access))
            view = self.mesh.get()
            if view is not sent_view:
                # A view built by hand (no history) says nothing of what changed: everything again, as when
                # this is too far behind to know.
                changes = view.changes_since(sent_view.generation) if view.history is not None else None
                if changes is None:
                    self._send(self._whole(view))
                elif (line := encode_delta(view, self.site, changes, self._held)) is not None:
                    self._send(line)
                sent_view = view
            if self.certificate.get() is not sent_cert:
                sent_cert = self.certificate.get()
                self._send(b"reload\n")

    async def start(self, port: int) -> None:
        """Start the workers on `port` (already bound with SO_REUSEPORT here) and wait until they listen."""
        config = json.dumps({
            "site": self.site, "port": port, "files": [str(f) for f in self.files],
            "settings": {k: getattr(self.settings, k) for k in (
                "listen_address", "handshake_timeout", "preamble_timeout", "tunnel_idle_timeout",
                "idle_timeout", "connect_timeout", "max_connections", "accept_rate", "accept_burst", "read_size",
                "high_water")},
        })
        for i in range(self.count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.workers", config,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )
            self._procs.append(proc)
            assert proc.stdin is not None
            assert proc.stdout is not None
            if i == 0:
                whole = self._whole(self.mesh.get())
            proc.stdin.write(whole)
            proc.stdin.write(_access_line(self.access.get()))
            line = await proc.stdout.readline()
            if not line.startswith(b"READY"):
                raise RuntimeError(f"gateway worker {i + 1} did not start (exit {await proc.wait()})")
            log.info("gateway worker %d (pid %d) listening on port %d", i + 1, proc.pid, port)

    async def close(self, grace: float = 0.0) -> None:
        """Close the workers' stdin (they stop accepting and drain for `grace`), then wait for them."""
        for proc in self._procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.write(json.dumps({"stop": grace}).encode() + b"\n")
                proc.stdin.close()
        for proc in self._procs:
            try:
                async with asyncio.timeout(grace + 10):
                    await proc.wait()
            except TimeoutError:
                log.warning("gateway worker pid %d did not stop; killing it", proc.pid)
                proc.kill()
                await proc.wait()
        self._procs.clear()

    def _whole(self, view: MeshView) -> bytes:
        self._sent = view
        self._held = {(e.namespace, e.name) for e in view.exports.values() if e.site == self.site}
        return encode_view(view, self.site)

    def _send(self, line: bytes) -> None:
        for proc in self._procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.write(line)


def _access_line(state: AccessState) -> bytes:
    return json.dumps({"access": state_document(state)}).encode() + b"\n"


async def _worker(config: dict[str, Any]) -> None:
    from federation.runtime import memory
    from gateway.eastwest import EastWestGateway
    from gateway.streams import set_read_size
    from gateway.tls import server_context

    memory.tune()
    chain, key, bundle = (Path(f) for f in config["files"])
    settings = GatewaySettings(**config["settings"], listen_port=config["port"], workers=2)
    set_read_size(settings.read_size)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    mesh = Value(decode_view(await reader.readline()), name="mesh view", same=operator.is_)
    access = Value(state_from_document(json.loads(await reader.readline())["access"]), name="access state")
    context = server_context(chain, key, bundle)
    trust = Value(TrustBundle.from_pem(bundle.read_bytes()), name="trust bundle")
    gateway = EastWestGateway(config["site"], mesh, context, trust, settings, access=access)
    await gateway.start()
    tunnels = asyncio.get_running_loop().create_task(gateway.run(), name="gateway-tunnels")
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    grace = 0.0
    while line := await reader.readline():
        if line == b"reload\n":  # the leaf, the trust bundle, or both, were renewed
            context.load_cert_chain(str(chain), str(key))
            context.load_verify_locations(cafile=str(bundle))
            trust.set(TrustBundle.from_pem(bundle.read_bytes()))
        elif line.startswith(b'{"stop"'):
            grace = float(json.loads(line)["stop"])
        elif line.startswith(b'{"access"'):
            access.set(state_from_document(json.loads(line)["access"]))
        elif line.startswith(b'{"delta"'):
            mesh.set(apply_delta(mesh.get(), config["site"], line))
        else:
            mesh.set(decode_view(line))
    tunnels.cancel()
    await gateway.close(grace)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="worker %(process)d %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop  # as the agent: its TLS buffers cost a connection far less than asyncio's
        except ImportError:
            asyncio.run(_worker(json.loads(sys.argv[1])))
        else:
            uvloop.run(_worker(json.loads(sys.argv[1])))
