"""The registry over TLS with client certificates, against a real etcd started with TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest

from federation.core.errors import RegistryUnavailable
from federation.core.keys import Keys
from federation.pki.etcdcerts import issue_etcd_client, issue_etcd_server
from federation.pki.issuing import Issued, cert_pem, new_root
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.mirror import Mirror
from federation.registry.publisher import Publisher
from federation.runtime.files import TlsFiles, write_private, write_public
from federation.runtime.values import Value
from tests.util import eventually, export, site


def _write(directory: Path, name: str, issued: Issued) -> tuple[Path, Path]:
    write_public(directory / f"{name}.crt", issued.chain_pem())
    write_private(directory / f"{name}.key", issued.key_pem())
    return directory / f"{name}.crt", directory / f"{name}.key"


@pytest.fixture
def tls_etcd(tmp_path: Path) -> tuple[EtcdProcess, TlsFiles, TlsFiles]:
    now = dt.datetime.now(dt.UTC)
    root = new_root("mesh.example", now)
    other = new_root("other.example", now)
    pki = tmp_path / "pki"
    pki.mkdir()
    write_public(pki / "ca.crt", cert_pem(root.cert))
    server_cert, server_key = _write(pki, "etcd", issue_etcd_server(root, ["127.0.0.1", "localhost"], now))
    client_cert, client_key = _write(pki, "site-east", issue_etcd_client(root, "site-east", now))
    rogue_cert, rogue_key = _write(pki, "rogue", issue_etcd_client(other, "site-east", now))
    # zap logs every refused connection with its reason: what the refusal tests read.
    server = EtcdProcess(data_dir=tmp_path / "etcd", tls=TlsFiles(pki / "ca.crt", server_cert, server_key),
                         extra_args=("--logger=zap",))
    server.start()
    yield server, TlsFiles(pki / "ca.crt", client_cert, client_key), TlsFiles(pki / "ca.crt", rogue_cert, rogue_key)
    server.stop()


async def test_publish_and_mirror_over_tls(tls_etcd: tuple[EtcdProcess, TlsFiles, TlsFiles]) -> None:
    server, good, _ = tls_etcd
    keys = Keys()
    pub = Publisher(EtcdClient([server.endpoint], tls=good, timeout=3), keys, Value(site("east")),
                    Value((export("east"),)), ttl=5)
    mirror = Mirror(EtcdClient([server.endpoint], tls=good, timeout=3), keys)
    tasks = [asyncio.create_task(pub.run(), name="pub"), asyncio.create_task(mirror.run(), name="mirror")]
    try:
        await eventually(lambda: ("east", "shop", "web") in mirror.mesh.get().exports, what="export over TLS")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def refusals_by_etcd(server: EtcdProcess, tls: TlsFiles | None) -> list[str]:
    """Try a listing with `tls`; it must fail. The reasons etcd logged for the connections it rejected meanwhile."""
    log = server.data_dir / "etcd.log"
    seen = log.stat().st_size
    client = EtcdClient([server.endpoint], tls=tls, timeout=2)
    try:
        with pytest.raises(RegistryUnavailable):
            await client.get_prefix("/meshfed/")
    finally:
        await client.close()
    reasons: list[str] = []
    async with asyncio.timeout(10):
        while not reasons:
            with log.open("rb") as f:
                f.seek(seen)
                lines = [json.loads(line) for line in f.read().splitlines() if line.startswith(b"{")]
            # "EOF": a connection closed before its first byte (the readiness probe of EtcdProcess.start).
            reasons = [line["error"] for line in lines if line.get("msg") == "rejected connection"
                       and line["error"] != "EOF"]
            await asyncio.sleep(0.05)
    return reasons


async def test_certificate_from_another_ca_is_refused(tls_etcd: tuple[EtcdProcess, TlsFiles, TlsFiles]) -> None:
    server, _, rogue = tls_etcd
    reasons = await refusals_by_etcd(server, rogue)
    assert all(r == "tls: failed to verify client certificate: x509: certificate signed by unknown authority"
               for r in reasons), reasons


async def test_plaintext_client_is_refused(tls_etcd: tuple[EtcdProcess, TlsFiles, TlsFiles]) -> None:
    server, _, _ = tls_etcd
    reasons = await refusals_by_etcd(server, None)
    assert all(r == "tls: first record does not look like a TLS handshake" for r in reasons), reasons


async def test_rbac_lets_a_site_write_only_its_own_prefix(tmp_path: Path) -> None:
    import subprocess
    import sys

    certs = tmp_path / "certs"
    ca_dir = tmp_path / "ca"

    def meshfed(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "federation", *args], check=True, capture_output=True, timeout=60)

    meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca_dir))
    meshfed("etcd", "certs", "--ca", str(ca_dir), "--host", "127.0.0.1", "--out", str(certs))
    for user in ("root", "site-east", "site-west"):
        meshfed("etcd", "client-cert", user, "--ca", str(ca_dir), "--out", str(certs))
    assert (certs / "site-east.key").stat().st_mode & 0o077 == 0
    server = EtcdProcess(data_dir=tmp_path / "etcd",
                         tls=TlsFiles(certs / "ca.crt", certs / "etcd.crt", certs / "etcd.key"))
    server.start()
    try:
        script = Path(__file__).parents[2] / "deploy" / "etcd" / "rbac.sh"
        subprocess.run(["bash", str(script), server.endpoint, str(certs), "east", "west"], check=True,
                       capture_output=True, timeout=60)

        def put(user: str, key: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                ["etcdctl", f"--endpoints=https://{server.endpoint}", f"--cacert={certs}/ca.crt",
                 f"--cert={certs}/{user}.crt", f"--key={certs}/{user}.key", "put", key, "{}"],
                capture_output=True, timeout=20, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})

        assert put("site-east", "/meshfed/v1/sites/east/services/shop/web").returncode == 0
        assert put("site-east", "/meshfed/v1/sites/east").returncode == 0
        denied = put("site-east", "/meshfed/v1/sites/west/services/shop/web")
        assert denied.returncode != 0
        assert b"permission denied" in denied.stderr
        assert put("site-east", "/meshfed/v1/sites/eastern").returncode != 0  # a neighbour's name is not ours

        # The agent's own publisher and mirror work with exactly these permissions.
        east_tls = TlsFiles(certs / "ca.crt", certs / "site-east.crt", certs / "site-east.key")
        pub = Publisher(EtcdClient([server.endpoint], tls=east_tls, timeout=3), Keys(), Value(site("east")),
                        Value((export("east", "api"),)), ttl=5)
        mirror = Mirror(EtcdClient([server.endpoint], tls=east_tls, timeout=3), Keys())
        tasks = [asyncio.create_task(pub.run(), name="pub"), asyncio.create_task(mirror.run(), name="mirror")]
        try:
            await eventually(lambda: ("east", "shop", "api") in mirror.mesh.get().exports, what="export under RBAC")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        server.stop()
