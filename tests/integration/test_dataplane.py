"""The data plane exactly as the agent composes it (federation/agent/dataplane.py), two sites on loopback.

The test plays the registry mirror: it owns the mesh view holder both planes follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from federation.agent.dataplane import DataPlane
from federation.agent.settings import AgentSettings, parse_settings
from federation.core.errors import ConfigError
from federation.core.records import ServiceExport
from federation.core.view import MeshView
from federation.pki.issuing import save_site
from federation.runtime.values import Value, wait_until
from tests.pkihelp import Mesh, export, view
from tests.tunnelhelp import EchoServer

KEY = ("ns", "echo", "tcp")


def settings(tmp: Path, site: str, **gateway: object) -> AgentSettings:
    return parse_settings({
        "site": {"name": site, "network": f"net-{site}"},
        "state_dir": str(tmp / f"{site}-state"),
        "gateway": {"listen_address": "127.0.0.1", "listen_port": 0, "ca_dir": str(tmp / site), "pool_size": 0,
                    **gateway},
        "dns": {"enabled": False},
        "vm": {"vip_interface": ""},
    }, f"{site}.yaml", {})


class NoEtcd:
    """The VIP allocator's client; these sites run without DNS, so it is never called."""

    async def get_prefix(self, prefix: str) -> tuple[dict[str, object], int]:
        raise AssertionError("no VIP allocation without DNS")

    async def put_if_absent(self, key: str, value: bytes, lease: int = 0) -> bool:
        raise AssertionError("unused")

    async def replace(self, key: str, old: bytes, new: bytes) -> bool:
        raise AssertionError("unused")

    async def delete_if(self, key: str, value: bytes) -> bool:
        raise AssertionError("unused")


@contextlib.asynccontextmanager
async def running(plane: DataPlane) -> AsyncIterator[DataPlane]:
    """`plane` started, with its long-lived tasks running as the agent's task group runs them."""
    await plane.start()
    tasks = [asyncio.create_task(work, name=name) for name, work in plane.tasks()]
    try:
        yield plane
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await plane.close()


@contextlib.asynccontextmanager
async def two_sites(tmp: Path, west_gateway: dict[str, object] | None = None,
                    **east_gateway: object) -> AsyncIterator[tuple[DataPlane, DataPlane, Value[MeshView],
                                                                   list[ServiceExport]]]:
    mesh = Mesh()
    for site in ("east", "west"):
        save_site(tmp / site, mesh.site_ca(site))
    echo = EchoServer()
    echo_port = await echo.start()
    holder: Value[MeshView] = Value(MeshView.before_sync())
    east = DataPlane(settings(tmp, "east", **east_gateway), holder, CollectorRegistry(), NoEtcd())
    west = DataPlane(settings(tmp, "west", **(west_gateway or {})), holder, CollectorRegistry(), NoEtcd())
    exports = [export("east", "ns", "echo", 7, endpoint_ports=(echo_port,))]
    try:
        async with running(east), running(west):
            # What the publishers write, read back by the mirror: the site records as the planes built them.
            holder.set(view([east.site_record.get(), west.site_record.get()], exports))
            yield east, west, holder, exports
    finally:
        await echo.close()


async def roundtrip(addr: tuple[str, int], payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(payload)
    writer.write_eof()
    try:
        return await reader.read()
    finally:
        writer.close()


async def test_two_planes_carry_traffic_and_follow_the_registry(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as (east, west, holder, _exports):
        assert west.egress is not None
        record = east.site_record.get()
        assert record.gateways[0].address == "127.0.0.1"
        assert record.ca_chain.startswith("-----BEGIN CERTIFICATE-----")
        async with asyncio.timeout(10):
            listening = await wait_until(west.egress.listening, lambda now: KEY in now)
        assert await roundtrip(listening[KEY], b"across") == b"across"
        assert (tmp_path / "west-state" / "gateway" / "gateway.key").stat().st_mode & 0o777 == 0o600
        holder.set(view([east.site_record.get(), west.site_record.get()], []))
        async with asyncio.timeout(10):
            await wait_until(west.egress.listening, lambda now: not now)


async def test_stopping_drains_a_stream_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as (_east, west, _holder, _exports):
        assert west.egress is not None
        async with asyncio.timeout(10):
            addr = (await wait_until(west.egress.listening, lambda now: KEY in now))[KEY]
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"first")
        assert await reader.readexactly(5) == b"first"
        draining = asyncio.create_task(west.drain(grace=10), name="drain")
        async with asyncio.timeout(5):
            while not draining.done():
                try:  # the listener is closed at once: a new client is refused
                    _, w = await asyncio.open_connection(*addr)
                    w.close()
                    await asyncio.sleep(0.01)
                except OSError:  # refused, or reset by a listener closing under the connect
                    break
        assert not draining.done(), "the drain waits for the stream in flight"
        writer.write(b" last")
        writer.write_eof()
        assert await reader.read() == b" last"  # the stream finished during the drain
        writer.close()
        async with asyncio.timeout(5):
            await draining


async def test_a_ca_of_another_site_is_a_config_error(tmp_path: Path) -> None:
    save_site(tmp_path / "east", Mesh().site_ca("east"))
    s = settings(tmp_path, "west")
    wrong = parse_settings({"site": {"name": "west", "network": "n"}, "gateway": {"ca_dir": str(tmp_path / "east")},
                            "state_dir": str(tmp_path / "w")}, "west.yaml", {})
    with pytest.raises(ConfigError, match="belongs to site 'east', not 'west'"):
        await DataPlane(wrong, Value(MeshView.before_sync()), CollectorRegistry(), NoEtcd()).start()
    with pytest.raises(ConfigError, match=r"gateway\.ca_dir: cannot read CA"):
        await DataPlane(s, Value(MeshView.before_sync()), CollectorRegistry(), NoEtcd()).start()


async def test_gateway_workers_share_the_port_and_reload_renewed_certificates(tmp_path: Path) -> None:
    async with two_sites(tmp_path, workers=2) as (east, west, _holder, _exports):
        assert east.eastwest is not None
        assert east.certs is not None
        assert west.egress is not None
        port = east.eastwest.address[1]
        # Stop the gateway in the agent's process: the worker alone now answers on the port.
        await east.eastwest.close()
        old = east.certs.issued.cert.serial_number
        new = east.certs.renew().cert.serial_number
        assert new != old

        def presented() -> int:
            ctx = ssl.create_default_context(cafile=str(east.certs.bundle_file))
            ctx.check_hostname = False
            ctx.load_cert_chain(str(west.certs.chain_file), str(west.certs.key_file))  # type: ignore[union-attr]
            with (ssl_socket(ctx, port) as tls):
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return int(x509.load_der_x509_certificate(der).serial_number)

        async with asyncio.timeout(15):  # the worker follows the certificate holder and reloads the files
            while await asyncio.to_thread(presented) != new:
                await asyncio.sleep(0.05)
        addr = (await wait_until(west.egress.listening, lambda now: KEY in now))[KEY]
        for i in range(3):
            assert await roundtrip(addr, b"via worker %d" % i) == b"via worker %d" % i


@contextlib.contextmanager
def ssl_socket(ctx: ssl.SSLContext, port: int):  # type: ignore[no-untyped-def]
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        yield tls


async def test_probes_take_a_dead_site_out_with_no_client_traffic(tmp_path: Path) -> None:
    """The prober feeds the egress's reachability (DNS answers unreachable sites last): a gateway that stops
    answering makes its site unreachable at west without any client connecting, within a few probes."""
    async with two_sites(tmp_path, {"probe_interval": 0.3}) as (east, west, _holder, _exports):
        assert west.egress is not None
        assert east.eastwest is not None
        await asyncio.sleep(1.0)  # a few good probes first
        assert "east" not in west.egress.unreachable.get()
        await east.eastwest.close()
        async with asyncio.timeout(10):
            await wait_until(west.egress.unreachable, lambda down: "east" in down)
        assert west.egress.active.count == 0  # no client was involved
