"""The mesh PKI: what the root, site CAs and gateway leaves say, and how their files are written."""

from __future__ import annotations

import argparse
import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from federation.cli import ca as cli_ca
from federation.pki.issuing import (
    PkiError,
    issue_gateway,
    load_authority,
    load_site,
    new_root,
    new_site_ca,
    site_of_ca,
    trust_domain_of,
    uris_of,
)
from tests.pkihelp import Mesh, now


def test_site_ca_is_constrained_to_its_site() -> None:
    mesh = Mesh()
    ca = mesh.site_ca("east")
    nc = ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.DNSName("east.mesh.example")]
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca
    assert bc.path_length == 0
    assert site_of_ca(ca.cert) == "east"
    assert trust_domain_of(ca.cert) == "mesh.example"
    assert ca.cert.subject.rfc4514_string() == "CN=east,OU=site,O=meshfed"


def test_gateway_leaf_names_its_spiffe_id_and_lasts_a_day() -> None:
    mesh = Mesh()
    t = now().replace(microsecond=0)
    leaf = issue_gateway(mesh.site_ca("east"), "gw-1", t)
    assert uris_of(leaf.cert) == ["spiffe://mesh.example/site/east/gateway/gw-1"]
    assert leaf.cert.not_valid_after_utc - t == dt.timedelta(hours=24)
    verified = PolicyBuilder().store(Store([mesh.root.cert])).time(t).build_client_verifier().verify(
        leaf.cert, list(leaf.chain)
    )
    assert len(verified.chain) == 3


def test_leaf_never_outlives_its_site_ca() -> None:
    root = new_root("mesh.example", now())
    ca = new_site_ca(root, "east", now(), dt.timedelta(hours=1))
    leaf = issue_gateway(ca, "gw", now(), dt.timedelta(days=30))
    assert leaf.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_a_site_ca_cannot_issue_dns_names_of_another_site() -> None:
    mesh = Mesh()
    # A leaf of site "east" that also claims a DNS name of "west" violates east's name constraints.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = mesh.site_ca("east")
    good = mesh.leaf("east")
    key = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateBuilder()
        .subject_name(good.cert.subject).issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(1).not_valid_before(good.cert.not_valid_before_utc)
        .not_valid_after(good.cert.not_valid_after_utc)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("gw.west.mesh.example")]), critical=False)
        .add_extension(good.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value,
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    verifier = PolicyBuilder().store(Store([mesh.root.cert])).time(now()).build_client_verifier()
    with pytest.raises(VerificationError):
        verifier.verify(forged, [ca.cert])


@pytest.mark.parametrize("td", ["Mesh.example", "", "a..b", "mesh example", "-mesh"])
def test_bad_trust_domains_are_refused(td: str) -> None:
    with pytest.raises(PkiError, match="trust domain"):
        new_root(td, now())


def test_bad_site_names_are_refused() -> None:
    with pytest.raises(PkiError, match="site"):
        new_site_ca(Mesh().root, "East_1", now())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshfed")
    cli_ca.add_commands(parser.add_subparsers(dest="command"))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    result: int = args.handler(args)
    return result


def test_ca_commands_write_private_keys_0600_and_refuse_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir, site_dir = tmp_path / "ca", tmp_path / "east"
    assert _run("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca_dir)) == 0
    assert _run("ca", "site", "east", "--ca", str(ca_dir), "--out", str(site_dir)) == 0
    for key in (ca_dir / "ca.key", site_dir / "site.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    root = load_authority(ca_dir)
    site = load_site(site_dir)
    assert site.parents == (root.cert,)
    assert (site_dir / "trust-bundle.pem").read_bytes() == (ca_dir / "ca.crt").read_bytes()

    before = (ca_dir / "ca.key").read_bytes()
    capsys.readouterr()
    assert _run("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca_dir)) == 1
    assert "--force" in capsys.readouterr().err
    assert (ca_dir / "ca.key").read_bytes() == before
    assert _run("ca", "site", "east", "--ca", str(ca_dir), "--out", str(site_dir)) == 1
    assert _run("ca", "site", "east", "--ca", str(ca_dir), "--out", str(site_dir), "--force") == 0
    assert _run("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca_dir), "--force") == 0
    assert (ca_dir / "ca.key").read_bytes() != before


def test_ca_site_without_a_ca_fails_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("ca", "site", "east", "--ca", str(tmp_path / "nope"), "--out", str(tmp_path / "o")) == 1
    assert "cannot read CA" in capsys.readouterr().err
