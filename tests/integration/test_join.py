"""VM join without long-lived secrets: `meshfed join-token create|serve` and `meshfed vm install --join`.

The VM makes its site key itself and sends only a CSR; a token works once, before it expires, for its
site only; a rerun (a reboot, a re-provisioning run) keeps the identity it has and spends no token.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.pki.issuing import load_authority, site_of_ca
from federation.pki.joining import decode_token, new_key, site_csr


def meshfed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "federation", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[Path, str, subprocess.Popen[str]]]:
    ca = tmp_path / "ca"
    assert meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "federation", "join-token", "serve", "--ca", str(ca),
                             "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("signing endpoint on https://"), line + (proc.stderr.read() if proc.stderr else "")
        url = line.split()[3]
        yield ca, url, proc
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # reaps it and closes its pipes


def token(ca: Path, url: str, site: str = "vm1", ttl: str = "1h") -> str:
    out = meshfed("join-token", "create", "--site", site, "--ttl", ttl, "--ca", str(ca), "--url", url)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def install(root: Path, tok: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return meshfed("vm", "install", "--join", tok, "--network", "lan", "--root", str(root), "--no-venv",
                   "--no-start", "--dns", "none", *extra)


def test_a_vm_joins_with_a_key_that_never_leaves_it(endpoint: tuple[Path, str, subprocess.Popen[str]],
                                                    tmp_path: Path) -> None:
    ca, url, _ = endpoint
    tok = token(ca, url)
    out = install(tmp_path / "vm", tok)
    assert out.returncode == 0, out.stderr
    assert "joined the mesh as site vm1" in out.stdout
    site_dir = tmp_path / "vm" / "etc" / "meshfed" / "site"
    assert (site_dir / "site.key").stat().st_mode & 0o777 == 0o600
    auth = load_authority(site_dir, "site.crt", "site.key")
    assert site_of_ca(auth.cert) == "vm1"
    auth.cert.verify_directly_issued_by(load_authority(ca).cert)
    key = (site_dir / "site.key").read_bytes()
    assert not any(key in p.read_bytes() for p in ca.rglob("*") if p.is_file())  # the CA side never saw it
    assert "name: vm1" in (tmp_path / "vm" / "etc" / "meshfed" / "agent.yaml").read_text()
    # A rerun (after a reboot, or by provisioning again): the identity stays, the token is not spent again.
    again = install(tmp_path / "vm", tok)
    assert again.returncode == 0, again.stderr
    assert "already holds the identity of site vm1" in again.stdout
    assert (site_dir / "site.key").read_bytes() == key
    ls = meshfed("join-token", "ls", "--ca", str(ca)).stdout
    assert "vm1" in ls
    assert "used" in ls


def test_a_token_works_once(endpoint: tuple[Path, str, subprocess.Popen[str]], tmp_path: Path) -> None:
    ca, url, _ = endpoint
    tok = token(ca, url)
    assert install(tmp_path / "vm1", tok).returncode == 0
    copy = install(tmp_path / "another-vm", tok)  # a second machine with the same token
    assert copy.returncode == 1
    assert f"join token {decode_token(tok).id} was used already" in copy.stderr
    assert not (tmp_path / "another-vm" / "etc" / "meshfed" / "site" / "site.key").exists()


def test_an_expired_token_is_refused(endpoint: tuple[Path, str, subprocess.Popen[str]], tmp_path: Path) -> None:
    ca, url, _ = endpoint
    tok = token(ca, url, ttl="1s")
    time.sleep(1.2)
    out = install(tmp_path / "vm", tok)
    assert out.returncode == 1
    assert "the join token expired at" in out.stderr
    # And the endpoint refuses it too, should a VM skip its own check.
    assert "expired at" in post(url, tok, "vm1")


def test_a_token_for_another_site_is_refused(endpoint: tuple[Path, str, subprocess.Popen[str]],
                                             tmp_path: Path) -> None:
    ca, url, _ = endpoint
    tok = token(ca, url, site="vm1")
    out = install(tmp_path / "vm", tok, "--site", "vm2")
    assert out.returncode == 1
    assert "the token is for site vm1, not vm2" in out.stderr
    assert f"join token {decode_token(tok).id} is for site vm1, not vm2" in post(url, tok, "vm2")
    # The token is still good for its own site.
    assert install(tmp_path / "vm", tok).returncode == 0


def test_a_forged_token_and_a_foreign_endpoint_are_refused(endpoint: tuple[Path, str, subprocess.Popen[str]],
                                                          tmp_path: Path) -> None:
    ca, url, _ = endpoint
    tok = token(ca, url)
    t = decode_token(tok)
    assert "unknown join token" in post(url, tok, "vm1", secret="guessed")
    # A token whose root hash is not this endpoint's root: the VM stops before sending anything.
    from dataclasses import replace

    fake = replace(t, root_sha256="0" * 64).encode()
    out = install(tmp_path / "vm", fake)
    assert out.returncode == 1
    assert "presents another root than the token names" in out.stderr


def post(url: str, tok: str, site: str, secret: str | None = None) -> str:
    """A join request sent by hand; the endpoint's error message."""
    t = decode_token(tok)
    body = json.dumps({"id": t.id, "secret": secret or t.secret, "site": site,
                       "csr": site_csr(site, new_key()).decode()}).encode()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"{url}/v1/join", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10, context=ctx)
    with err.value:
        assert err.value.code == 403
        return str(json.loads(err.value.read())["error"])


def test_the_certificate_is_checked_against_the_token(tmp_path: Path) -> None:
    from federation.pki.joining import JoinRefused, check_issued
    from tests.pkihelp import Mesh

    mesh = Mesh()
    key = new_key()
    other = Mesh().site_ca("vm1").cert
    with pytest.raises(JoinRefused, match="not for this VM's key"):
        check_issued(other, key, "vm1", mesh.root.cert)
