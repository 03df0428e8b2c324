"""The gateway certificate store during a rotation: a new intermediate is announced before it is used."""

from __future__ import annotations

from pathlib import Path

from federation.pki.issuing import cert_pem, load_certs, new_root, new_site_ca
from federation.pki.verifying import TrustBundle
from federation.runtime.values import Value
from gateway.tls import CertificateStore
from tests.pkihelp import Mesh, now


def test_a_new_site_ca_is_listed_first_and_used_only_on_switch(tmp_path: Path) -> None:
    mesh = Mesh()
    store = CertificateStore(mesh.site_ca("east"), "gw", tmp_path)
    old_leaf = store.issued
    new_ca = new_site_ca(new_root(mesh.trust_domain, now(), label="2"), "east", now())
    store.stage_site_ca(new_ca)
    listed = load_certs(store.ca_chain_pem.encode())
    assert listed == [new_ca.cert, mesh.site_ca("east").cert]  # peers can verify either
    assert store.issued is old_leaf  # ...and the leaf is still the old one
    leaf = store.switch_site_ca()
    leaf.cert.verify_directly_issued_by(new_ca.cert)
    assert load_certs(store.ca_chain_pem.encode())[0] == new_ca.cert
    store.close()


def test_new_roots_are_loaded_into_the_live_contexts_and_the_file(tmp_path: Path) -> None:
    mesh = Mesh()
    other = new_root(mesh.trust_domain, now(), label="2")
    trust = Value(TrustBundle.from_pem(mesh.bundle_pem()), name="trust")
    store = CertificateStore(mesh.site_ca("east"), "gw", tmp_path, trust=trust)
    before = store.server.cert_store_stats()["x509_ca"]
    assert not store.apply_trust()
    trust.set(TrustBundle.from_pem(mesh.bundle_pem() + cert_pem(other.cert), sequence=1))
    assert store.apply_trust()
    assert store.server.cert_store_stats()["x509_ca"] == before + 1
    assert store.client.cert_store_stats()["x509_ca"] == before + 1
    assert len(load_certs(store.bundle_file.read_bytes())) == 2
    assert store.changed.get() == 1
    store.close()
