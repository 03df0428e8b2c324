"""Signing keys keep their roles apart: a gateway leaf signs no record, a signer opens no tunnel, a site signs
only for itself, an operator key comes from the root, and an altered or moved record fails."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.x509.oid import NameOID

from federation.core import envelope
from federation.core.errors import RecordError
from federation.pki.issuing import issue_gateway
from federation.pki.signing import (
    check_signature,
    issue_operator,
    issue_registry_signer,
    kid_of,
    verify_operator,
    verify_site_signer,
)
from federation.pki.verifying import PeerRejected, TrustBundle, verify_peer
from tests.pkihelp import Mesh, now, view


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


def test_a_site_signer_verifies_for_its_site_only(mesh: Mesh) -> None:
    east = mesh.site_ca("east")
    signer = issue_registry_signer(east, now())
    roots = (mesh.root.cert,)
    assert verify_site_signer(signer.cert, [east.cert], roots, "east", now()) == signer.cert.not_valid_after_utc
    with pytest.raises(RecordError, match="is not the registry signer of site west"):
        verify_site_signer(signer.cert, [east.cert], roots, "west", now())
    with pytest.raises(RecordError, match="expired or not yet valid"):
        verify_site_signer(signer.cert, [east.cert], roots, "east", now() + dt.timedelta(days=31))


def test_a_gateway_leaf_is_no_signer_and_a_signer_opens_no_tunnel(mesh: Mesh) -> None:
    east = mesh.site_ca("east")
    leaf = issue_gateway(east, "gw", now())
    with pytest.raises(RecordError, match="is not the registry signer"):
        verify_site_signer(leaf.cert, [east.cert], (mesh.root.cert,), "east", now())
    signer = issue_registry_signer(east, now())
    from cryptography.hazmat.primitives import serialization

    der = signer.cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(PeerRejected, match="does not name a gateway"):
        verify_peer(der, view([mesh.site("east")]), TrustBundle.from_pem(mesh.bundle_pem()), now())


def test_an_operator_key_comes_from_the_root(mesh: Mesh) -> None:
    op = issue_operator(mesh.root, "alice", now())
    assert verify_operator(op.cert, (mesh.root.cert,), now()) == "alice"
    with pytest.raises(RecordError, match="no chain to a root in force"):
        verify_operator(op.cert, (Mesh().root.cert,), now())
    site_signer = issue_registry_signer(mesh.site_ca("east"), now())
    with pytest.raises(RecordError, match="is not an operator"):
        verify_operator(site_signer.cert, (mesh.root.cert,), now())
    assert not site_signer.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)  # no etcd user name


def test_a_signature_covers_the_key_and_every_byte(mesh: Mesh) -> None:
    signer = issue_registry_signer(mesh.site_ca("east"), now())
    value = signer.sign("/k", {"a": 1, "z": [1, 2]}, 5)
    split = envelope.split(value)
    assert split.signature is not None
    assert split.signature.kid == kid_of(signer.cert)
    check_signature(signer.cert, "/k", split)
    with pytest.raises(RecordError, match="does not match"):
        check_signature(signer.cert, "/other", split)
    with pytest.raises(RecordError, match="does not match"):
        check_signature(signer.cert, "/k", envelope.split(value.replace(b'"a":1', b'"a":2')))
    with pytest.raises(RecordError, match="does not match"):
        check_signature(signer.cert, "/k", envelope.split(value.replace(b'"at":5', b'"at":6')))
    other = issue_registry_signer(mesh.site_ca("east"), now())
    with pytest.raises(RecordError, match="does not match"):
        check_signature(other.cert, "/k", split)
