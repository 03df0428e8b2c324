"""Record verification in the catalog: what a raw etcd writer can no longer do, and what still works."""

from __future__ import annotations

import dataclasses

import pytest

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from federation.core.meshdocs import (
    Revocations,
    TrustDocument,
    revocations_body,
    revocations_key,
    trust_body,
    trust_key,
)
from federation.core.verification import Mode
from federation.pki.issuing import cert_pem, new_root
from federation.pki.records import RecordVerifier
from federation.pki.signing import root_signer
from federation.pki.verifying import TrustBundle
from tests.pkihelp import Mesh, Signers, export, now

KEYS = Keys()


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


@pytest.fixture
def signers(mesh: Mesh) -> Signers:
    return Signers(mesh)


def reader(mesh: Mesh, mode: Mode = Mode.REQUIRE) -> tuple[Catalog, RecordVerifier]:
    verifier = RecordVerifier(KEYS, TrustBundle.from_pem(mesh.bundle_pem()), mode)
    return Catalog(KEYS, check=verifier.check), verifier


def web(site: str = "east", address: str = "10.0.0.1") -> object:
    return export(site, "shop", "web", 80, addresses=(address,))


def publish(catalog: Catalog, signers: Signers, site: str = "east", address: str = "10.0.0.1") -> tuple[bytes, bytes]:
    site_value = signers.site_record(signers.mesh.site(site), listed=("shop/web",))
    export_value = signers.export_record(web(site, address))  # type: ignore[arg-type]
    assert not catalog.put(KEYS.site(site), site_value).rejected
    assert not catalog.put(KEYS.service(site, "shop", "web"), export_value).rejected
    return site_value, export_value


def addresses(catalog: Catalog, site: str = "east") -> tuple[str, ...]:
    export_ = catalog.view().exports.get((site, "shop", "web"))
    return export_.endpoints[0].addresses if export_ is not None else ()


def test_signed_records_are_taken(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    publish(catalog, signers)
    assert addresses(catalog) == ("10.0.0.1",)
    assert "east" in catalog.view().sites


def test_a_record_signed_by_a_key_of_no_site_is_refused(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    publish(catalog, signers)
    stranger = Signers(Mesh())  # its own root: the attacker's CA
    forged = stranger.export_record(web(address="203.0.113.9"))  # type: ignore[arg-type]
    out = catalog.put(KEYS.service("east", "shop", "web"), forged)
    assert len(out.rejected) == 1
    assert "which the site record of east does not list" in out.rejected[0].reason
    assert addresses(catalog) == ()  # the key holds no valid record now: used by nobody
    assert "east" in catalog.view().sites  # and nothing else is disturbed


def test_a_forged_site_record_with_its_own_signer_is_refused(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    stranger = Signers(Mesh())
    out = catalog.put(KEYS.site("east"), stranger.site_record(mesh.site("east")))
    assert "not by a valid signer it lists" in out.rejected[0].reason
    assert "does not verify to a trusted root" in out.rejected[0].reason


def test_a_record_signed_with_another_sites_key_is_refused(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    publish(catalog, signers, "west")
    publish(catalog, signers, "east")
    forged = signers.export_record(web("east", "203.0.113.9"), by="west")  # type: ignore[arg-type]
    out = catalog.put(KEYS.service("east", "shop", "web"), forged)
    assert out.rejected[0].reason == "signed with the key of site west, not of east"
    # Nor can west vouch for its own key in east's site record.
    out = catalog.put(KEYS.site("east"), signers.site_record(mesh.site("east"), by="west"))
    assert "is not the registry signer of site east" in out.rejected[0].reason


def test_a_signature_moved_to_another_key_is_refused(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    _, value = publish(catalog, signers)
    out = catalog.put(KEYS.service("east", "shop", "api"), value)
    assert "does not match the record" in out.rejected[0].reason


def test_an_altered_record_is_refused(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    _, value = publish(catalog, signers)
    out = catalog.put(KEYS.service("east", "shop", "web"), value.replace(b"10.0.0.1", b"10.6.6.6"))
    assert "does not match the record" in out.rejected[0].reason


def test_a_replayed_old_record_is_refused(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    _, old = publish(catalog, signers, address="10.0.0.1")
    newer = signers.export_record(web(address="10.0.0.2"))  # type: ignore[arg-type]
    assert not catalog.put(KEYS.service("east", "shop", "web"), newer).rejected
    out = catalog.put(KEYS.service("east", "shop", "web"), old)
    assert "a replayed old record" in out.rejected[0].reason


def test_a_replayed_export_the_site_no_longer_lists_is_refused(mesh: Mesh, signers: Signers) -> None:
    catalog, verifier = reader(mesh)
    _, old = publish(catalog, signers)
    catalog.delete(KEYS.service("east", "shop", "web"))
    verifier.deleted(KEYS.service("east", "shop", "web"))
    catalog.put(KEYS.site("east"), signers.site_record(mesh.site("east"), listed=()))
    out = catalog.put(KEYS.service("east", "shop", "web"), old)
    assert "does not list shop/web" in out.rejected[0].reason


def test_a_stripped_signature_is_refused_in_both_modes(mesh: Mesh, signers: Signers) -> None:
    unsigned = encode_export(web(address="10.6.6.6"))  # type: ignore[arg-type]
    catalog, _ = reader(mesh, Mode.REQUIRE)
    publish(catalog, signers)
    out = catalog.put(KEYS.service("east", "shop", "web"), unsigned)
    assert out.rejected[0].reason == "the record is not signed (registry.signatures is require)"
    catalog, _ = reader(mesh, Mode.ACCEPT)
    publish(catalog, signers)
    out = catalog.put(KEYS.service("east", "shop", "web"), unsigned)
    assert out.rejected[0].reason == "site east signs its records; this unsigned one is not from it"


def test_accept_mode_takes_unsigned_records_of_a_site_that_never_signed(mesh: Mesh) -> None:
    catalog, _ = reader(mesh, Mode.ACCEPT)
    assert not catalog.put(KEYS.site("old"), encode_site(mesh.site("old"))).rejected
    assert not catalog.put(KEYS.service("old", "shop", "web"), encode_export(web("old"))).rejected  # type: ignore[arg-type]
    assert addresses(catalog, "old") == ("10.0.0.1",)


def test_an_export_before_its_site_record_is_held_and_taken_when_it_comes(mesh: Mesh, signers: Signers) -> None:
    catalog, verifier = reader(mesh)
    key = KEYS.service("east", "shop", "web")
    out = catalog.put(key, signers.export_record(web()))  # type: ignore[arg-type]
    assert "held until one comes" in out.rejected[0].reason
    catalog.put(KEYS.site("east"), signers.site_record(mesh.site("east"), listed=("shop/web",)))
    for k, value, rev in verifier.retry("east"):
        catalog.forget([k])
        assert not catalog.put(k, value, rev).rejected
    assert addresses(catalog) == ("10.0.0.1",)


def test_a_revoked_sites_records_are_refused(mesh: Mesh, signers: Signers) -> None:
    catalog, verifier = reader(mesh)
    op = signers.operator()
    doc = Revocations().revoke("east", "key leaked", 1.0)
    effect = verifier.document(revocations_key(KEYS), op.sign(revocations_key(KEYS),
                                                              revocations_body(doc, op.cert_pem()), signers.at()))
    assert effect.drop_sites == {"east"}
    out = catalog.put(KEYS.site("east"), signers.site_record(mesh.site("east")))
    assert out.rejected[0].reason == "site east is revoked by the operator (key leaked)"


def test_revocations_must_be_operator_signed_newer_and_cannot_be_deleted(mesh: Mesh, signers: Signers) -> None:
    _, verifier = reader(mesh)
    key = revocations_key(KEYS)
    op = signers.operator()
    first = Revocations().revoke("east", "", 1.0)
    second = first.restore("east")
    v1 = op.sign(key, revocations_body(first, op.cert_pem()), signers.at())
    v2 = op.sign(key, revocations_body(second, op.cert_pem()), signers.at())
    verifier.document(key, v1)
    assert verifier.document(key, v2).recheck  # east restored: every record is verified again
    with pytest.raises(Exception, match="a replayed old list"):
        verifier.document(key, v1)
    assert not verifier.document(key, None)  # a delete changes nothing
    assert "east" not in verifier.revocations.get().sites
    site_signer = signers.signer("east")  # a site key is no operator key
    with pytest.raises(Exception, match="is not an operator"):
        verifier.document(key, site_signer.sign(key, revocations_body(first.revoke("west", "", 2.0).revoke("x", "", 3),
                                                                      site_signer.cert_pem()), signers.at()))


def test_a_trust_bundle_is_taken_only_when_a_root_in_force_signed_it(mesh: Mesh, signers: Signers) -> None:
    _, verifier = reader(mesh)
    key = trust_key(KEYS)
    new = new_root(mesh.trust_domain, now())
    both = TrustDocument(mesh.trust_domain, (cert_pem(mesh.root.cert).decode(), cert_pem(new.cert).decode()), 1)
    with pytest.raises(Exception, match="not by a root in force"):
        verifier.document(key, root_signer(new).sign(key, trust_body(both), signers.at()))
    assert verifier.document(key, root_signer(mesh.root).sign(key, trust_body(both), signers.at())).recheck
    assert len(verifier.trust.get().roots) == 2
    only_new = dataclasses.replace(both, roots=both.roots[1:], sequence=2)
    assert verifier.document(key, root_signer(mesh.root).sign(key, trust_body(only_new), signers.at())).recheck
    assert verifier.trust.get().roots == (new.cert,)
    with pytest.raises(Exception, match="a replayed old bundle"):
        verifier.document(key, root_signer(mesh.root).sign(key, trust_body(both), signers.at()))
    other = new_root("other.example", now())
    foreign = TrustDocument("other.example", (cert_pem(other.cert).decode(),), 3)
    with pytest.raises(Exception, match="trust domains are never merged"):
        verifier.document(key, root_signer(new).sign(key, trust_body(foreign), signers.at()))


def test_a_revoked_operator_key_signs_nothing_readers_take(mesh: Mesh, signers: Signers) -> None:
    from federation.core.meshdocs import decode_revocations
    from federation.core.policy import access

    _, verifier = reader(mesh)
    key = revocations_key(KEYS)
    alice, mallory = signers.operator("alice"), signers.operator("mallory")
    policy_key = access.key_of(KEYS, "shop", "web")
    policy = access.encode({"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPolicy",
                            "metadata": {"namespace": "shop", "name": "web"}, "spec": {"rules": []}})
    assert verifier.mesh_policy(policy_key, mallory.sign(policy_key, {**policy, "signer": mallory.cert_pem()},
                                                         signers.at()))
    # alice revokes mallory's key; a site revoked before stays revoked, and the list reads back the same.
    doc = Revocations().revoke("edge", "", 1.0).revoke_operator(mallory.kid, "key stolen", 2.0)
    assert decode_revocations(dump_json_of(revocations_body(doc, alice.cert_pem()))) == doc
    verifier.document(key, alice.sign(key, revocations_body(doc, alice.cert_pem()), signers.at()))
    with pytest.raises(Exception, match=f"signed by operator key {mallory.kid}, which is revoked \\(key stolen\\)"):
        verifier.mesh_policy(policy_key, mallory.sign(policy_key, {**policy, "signer": mallory.cert_pem()},
                                                      signers.at()))
    # ...nor can it sign a newer list that lifts its own revocation.
    lifted = Revocations(doc.sites, doc.sequence + 1)
    with pytest.raises(Exception, match="which is revoked"):
        verifier.document(key, mallory.sign(key, revocations_body(lifted, mallory.cert_pem()), signers.at()))
    assert mallory.kid in verifier.revocations.get().operators
    assert verifier.revocations.get().restore("edge").operators == doc.operators  # restoring a site keeps it
    assert verifier.mesh_policy(policy_key, alice.sign(policy_key, {**policy, "signer": alice.cert_pem()},
                                                       signers.at()))


def dump_json_of(body: dict) -> bytes:  # type: ignore[type-arg]
    from federation.core.codec import dump_json

    return dump_json(body)
