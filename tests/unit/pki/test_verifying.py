"""The pure peer verifier: each check, and what it stops."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.pki.issuing import cert_pem, issue_gateway, new_site_ca
from federation.pki.verifying import PeerRejected, TrustBundle, parse_spiffe_id, verify_peer
from tests.pkihelp import Mesh, now, view


def der(mesh_leaf: object) -> bytes:
    return mesh_leaf.cert.public_bytes(serialization.Encoding.DER)  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


def test_a_gateway_of_a_registered_site_is_accepted(mesh: Mesh) -> None:
    v = view([mesh.site("east"), mesh.site("west")])
    peer = verify_peer(der(mesh.leaf("east", "gw-1")), v, TrustBundle.from_pem(mesh.bundle_pem()), now())
    assert (peer.site, peer.gateway) == ("east", "gw-1")
    assert peer.spiffe_id == "spiffe://mesh.example/site/east/gateway/gw-1"


def test_no_certificate(mesh: Mesh) -> None:
    with pytest.raises(PeerRejected, match="no certificate"):
        verify_peer(None, view([]), TrustBundle.from_pem(mesh.bundle_pem()), now())


def test_site_not_in_registry(mesh: Mesh) -> None:
    with pytest.raises(PeerRejected, match="not in the registry"):
        verify_peer(der(mesh.leaf("east")), view([mesh.site("west")]), TrustBundle.from_pem(mesh.bundle_pem()),
                    now())


def test_expected_site_mismatch(mesh: Mesh) -> None:
    v = view([mesh.site("east"), mesh.site("west")])
    with pytest.raises(PeerRejected, match="not a gateway of site west"):
        verify_peer(der(mesh.leaf("east")), v, TrustBundle.from_pem(mesh.bundle_pem()), now(), expect_site="west")


def test_site_a_cannot_speak_as_site_b(mesh: Mesh) -> None:
    """East's CA issues a leaf whose SPIFFE ID names west: it does not verify through west's CA."""
    east_ca = mesh.site_ca("east")
    impostor_ca = dataclasses.replace(east_ca)
    forged = issue_gateway(impostor_ca, "gw", now())
    # Rewrite the SAN: issue a leaf claiming west, signed by east's key.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = forged.cert
    builder = (
        x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
        .public_key(forged.key.public_key()).serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        if isinstance(ext.value, x509.SubjectAlternativeName):
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://mesh.example/site/west/gateway/gw")]), critical=False)
        else:
            builder = builder.add_extension(ext.value, critical=ext.critical)
    claim_west = builder.sign(east_ca.key, hashes.SHA256())
    v = view([mesh.site("east"), mesh.site("west")])
    with pytest.raises(PeerRejected, match="does not verify through the CA that site west registered"):
        verify_peer(claim_west.public_bytes(serialization.Encoding.DER), v,
                    TrustBundle.from_pem(mesh.bundle_pem()), now())
    # Even if west's record listed east's CA too, the issuer's own site must match.
    west = dataclasses.replace(mesh.site("west"), ca_chain=cert_pem(east_ca.cert).decode())
    with pytest.raises(PeerRejected, match="issued by the CA of site east, not west"):
        verify_peer(claim_west.public_bytes(serialization.Encoding.DER), view([west]),
                    TrustBundle.from_pem(mesh.bundle_pem()), now())


def test_certificate_of_another_ca(mesh: Mesh) -> None:
    other = Mesh()
    v = view([mesh.site("east")])
    with pytest.raises(PeerRejected, match="does not verify"):
        verify_peer(der(other.leaf("east")), v, TrustBundle.from_pem(mesh.bundle_pem()), now())


def test_other_trust_domain(mesh: Mesh) -> None:
    other = Mesh(trust_domain="other.example")
    with pytest.raises(PeerRejected, match="outside trust domain"):
        verify_peer(der(other.leaf("east")), view([mesh.site("east")]), TrustBundle.from_pem(mesh.bundle_pem()),
                    now())


def test_expired(mesh: Mesh) -> None:
    leaf = mesh.leaf("east", lifetime=dt.timedelta(minutes=1), at=now() - dt.timedelta(hours=1))
    with pytest.raises(PeerRejected, match="does not verify"):
        verify_peer(der(leaf), view([mesh.site("east")]), TrustBundle.from_pem(mesh.bundle_pem()), now())


def test_site_without_ca_chain(mesh: Mesh) -> None:
    east = dataclasses.replace(mesh.site("east"), ca_chain="")
    with pytest.raises(PeerRejected, match="no CA chain"):
        verify_peer(der(mesh.leaf("east")), view([east]), TrustBundle.from_pem(mesh.bundle_pem()), now())


def test_a_site_ca_is_not_a_gateway(mesh: Mesh) -> None:
    ca2 = new_site_ca(mesh.root, "east", now())
    with pytest.raises(PeerRejected, match="does not name a gateway"):
        verify_peer(ca2.cert.public_bytes(serialization.Encoding.DER), view([mesh.site("east")]),
                    TrustBundle.from_pem(mesh.bundle_pem()), now())


@pytest.mark.parametrize("uri", [
    "https://mesh.example/site/a/gateway/b", "spiffe://Mesh.example/x", "spiffe://mesh.example/a//b",
    "spiffe://mesh.example/../a", "spiffe://mesh.example:8443/a", "spiffe://mesh.example/a?x=1", "spiffe:///a",
])
def test_malformed_spiffe_ids(uri: str) -> None:
    with pytest.raises(PeerRejected):
        parse_spiffe_id(uri)


def test_garbage_certificate(mesh: Mesh) -> None:
    with pytest.raises(PeerRejected, match="does not parse"):
        verify_peer(b"\x30\x03abc", view([]), TrustBundle.from_pem(mesh.bundle_pem()), now())


_MESH = Mesh()
_VIEW = view([_MESH.site("east")])
_BUNDLE = TrustBundle.from_pem(_MESH.bundle_pem())
_GOOD = der(_MESH.leaf("east"))


@settings(deadline=None, max_examples=200)  # shared CI machines: a slow example is not a failure
@given(st.binary(max_size=600) | st.builds(
    lambda pos, val: _GOOD[:pos % len(_GOOD)] + bytes([val]) + _GOOD[pos % len(_GOOD) + 1:],
    st.integers(0, 10_000), st.integers(0, 255)))
def test_any_certificate_bytes_only_ever_raise_peer_rejected(data: bytes) -> None:
    try:
        verify_peer(data, _VIEW, _BUNDLE, now())
    except PeerRejected:
        pass


def test_a_certificate_with_an_unknown_version_is_rejected() -> None:
    """Found by the fuzz test above: cryptography raises InvalidVersion, which is not a ValueError."""
    bad = bytearray(_GOOD)
    i = bad.index(b"\xa0\x03\x02\x01\x02") + 4  # [0] EXPLICIT version INTEGER 2 (v3)
    bad[i] = 1
    with pytest.raises(PeerRejected, match="does not parse"):
        verify_peer(bytes(bad), _VIEW, _BUNDLE, now())
