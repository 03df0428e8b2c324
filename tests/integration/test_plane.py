"""The data plane as the agent composes it: from a `meshfed ca site` directory to traffic across sites."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from federation.core.errors import ConfigError
from federation.core.records import Site
from federation.core.view import MeshView
from federation.pki.issuing import save_site
from gateway.plane import DataPlane
from gateway.settings import GatewaySettings
from tests.pkihelp import Mesh, export, view
from tests.tunnelhelp import EchoServer


async def test_two_planes_carry_traffic_between_sites(tmp_path: Path) -> None:
    mesh = Mesh()
    for site in ("east", "west"):
        save_site(tmp_path / site, mesh.site_ca(site))
    echo = EchoServer()
    echo_port = await echo.start()
    state: dict[str, MeshView] = {}

    def current() -> MeshView:
        return state["view"]

    def settings(site: str) -> GatewaySettings:
        return GatewaySettings(listen_address="127.0.0.1", listen_port=0, ca_dir=str(tmp_path / site),
                               cert_dir=str(tmp_path / f"{site}-certs"))

    state["view"] = view([], [])
    east = DataPlane("east", current, settings("east"))
    west = DataPlane("west", current, settings("west"))
    await east.start()
    sites = [
        Site("east", "net-east", gateways=(east.gateway_record("127.0.0.1"),), ca_chain=east.ca_chain_pem),
        Site("west", "net-west", ca_chain=west.ca_chain_pem),
    ]
    state["view"] = view(sites, [export("east", "ns", "echo", 7, endpoint_ports=(echo_port,))])
    east.update(state["view"])  # the gateway reads the view it was handed last
    await west.start()
    try:
        addr = west.egress.listeners()[("ns", "echo", "tcp")]
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"across")
        writer.write_eof()
        assert await reader.read() == b"across"
        writer.close()
        assert (tmp_path / "west-certs" / "gateway.key").stat().st_mode & 0o777 == 0o600
        state["view"] = view(sites, [])
        west.update(state["view"])
        await west.egress.settled()
        assert west.egress.listeners() == {}
    finally:
        await west.close()
        await east.close()
        await echo.close()


def test_a_ca_of_another_site_is_a_config_error(tmp_path: Path) -> None:
    save_site(tmp_path / "east", Mesh().site_ca("east"))
    with pytest.raises(ConfigError, match="belongs to site east, not west"):
        DataPlane("west", lambda: view([]), GatewaySettings(ca_dir=str(tmp_path / "east")))
    with pytest.raises(ConfigError, match=r"gateway\.ca_dir: required"):
        DataPlane("west", lambda: view([]), GatewaySettings())
    with pytest.raises(ConfigError, match="cannot read CA"):
        DataPlane("west", lambda: view([]), GatewaySettings(ca_dir=str(tmp_path / "nope")))


async def test_worker_processes_share_the_gateway_port(tmp_path: Path) -> None:
    mesh = Mesh()
    for site in ("east", "west"):
        save_site(tmp_path / site, mesh.site_ca(site))
    echo = EchoServer()
    echo_port = await echo.start()
    state: dict[str, MeshView] = {"view": view([], [])}

    def settings(site: str, workers: int) -> GatewaySettings:
        return GatewaySettings(listen_address="127.0.0.1", listen_port=0, ca_dir=str(tmp_path / site),
                               workers=workers, pool_size=0)

    east = DataPlane("east", lambda: state["view"], settings("east", 2))
    west = DataPlane("west", lambda: state["view"], settings("west", 1))
    await east.start()
    sites = [
        Site("east", "net-east", gateways=(east.gateway_record("127.0.0.1"),), ca_chain=east.ca_chain_pem),
        Site("west", "net-west", ca_chain=west.ca_chain_pem),
    ]
    state["view"] = view(sites, [export("east", "ns", "echo", 7, endpoint_ports=(echo_port,))])
    east.update(state["view"])
    await west.start()
    try:
        assert east.gateway is not None
        # Stop the gateway in the agent's process: the worker alone now answers on the port.
        await east.gateway.close()
        east.certs.renew()  # the worker reloads the renewed files
        addr = west.egress.listeners()[("ns", "echo", "tcp")]
        for i in range(3):
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"via worker %d" % i)
            writer.write_eof()
            assert await reader.read() == b"via worker %d" % i
            writer.close()
    finally:
        await west.close()
        await east.close()
        await echo.close()
