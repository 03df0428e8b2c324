"""Signed VIP allocations and claims in the catalog: what a raw etcd writer can no longer do with mesh/vips/."""

from __future__ import annotations

import datetime as dt

import pytest

from federation.core.catalog import Catalog
from federation.core.keys import Keys
from federation.core.meshdocs import Revocations, revocations_body, revocations_key
from federation.core.verification import Mode
from federation.core.vips import Allocation, Claim, encode_allocation, encode_claim
from federation.pki import viprecords
from federation.pki.records import RecordVerifier
from federation.pki.verifying import TrustBundle
from tests.pkihelp import Mesh, Signers, now

KEYS = Keys()
WEB, DB = ("shop", "web"), ("shop", "db")


class Clock:
    def __init__(self) -> None:
        self.now = now()

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


@pytest.fixture
def signers(mesh: Mesh) -> Signers:
    return Signers(mesh)


def reader(mesh: Mesh, mode: Mode = Mode.REQUIRE, clock: Clock | None = None) -> tuple[Catalog, RecordVerifier]:
    verifier = RecordVerifier(KEYS, TrustBundle.from_pem(mesh.bundle_pem()), mode, clock=clock)
    return Catalog(KEYS, check=verifier.check), verifier


def allocation(signers: Signers | None, service: tuple[str, str], address: str, by: str = "east") -> bytes:
    key, body = KEYS.vip(*service), encode_allocation(Allocation(service, (address,)))
    return signers.signer(by).sign(key, body, signers.at()) if signers is not None else body  # type: ignore[no-any-return]


def claim(signers: Signers, service: tuple[str, str], address: str, by: str = "east") -> bytes:
    key = KEYS.claim(address)
    return signers.signer(by).sign(key, encode_claim(Claim(address, service, 1.0)), signers.at())  # type: ignore[no-any-return]


def with_sites(catalog: Catalog, signers: Signers, *names: str) -> None:
    for name in names:
        assert not catalog.put(KEYS.site(name), signers.site_record(signers.mesh.site(name))).rejected


def vip(catalog: Catalog, service: tuple[str, str] = WEB) -> tuple[str, ...] | None:
    a = catalog.view().vips.get(service)
    return a.addresses if a is not None else None


def replay_held(catalog: Catalog, verifier: RecordVerifier, site: str) -> list[str]:
    """What the mirror does when a site record comes: apply the records held for it again."""
    reasons = []
    for key, value, rev in verifier.retry(site):
        catalog.forget([key])
        reasons += [r.reason for r in catalog.put(key, value, rev).rejected]
    return reasons


def test_signed_allocations_and_claims_are_taken_with_their_signer(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    with_sites(catalog, signers, "east")
    assert not catalog.put(KEYS.claim("240.240.0.7"), claim(signers, WEB, "240.240.0.7")).rejected
    assert not catalog.put(KEYS.vip(*WEB), allocation(signers, WEB, "240.240.0.7")).rejected
    got = catalog.view().vips[WEB]
    assert got.addresses == ("240.240.0.7",)
    assert got.signed is not None
    assert got.signed[0] == signers.signer("east").kid
    assert catalog.view().claims["240.240.0.7"].signed is not None


def test_a_raw_writer_cannot_swap_two_services_vips(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    with_sites(catalog, signers, "east")
    web, db = allocation(signers, WEB, "240.240.0.1"), allocation(signers, DB, "240.240.0.2")
    catalog.put(KEYS.vip(*WEB), web)
    catalog.put(KEYS.vip(*DB), db)
    # Each validly signed value moved to the other's key: the signature covers the key.
    for key, value in ((KEYS.vip(*WEB), db), (KEYS.vip(*DB), web)):
        out = catalog.put(key, value)
        assert "does not match the record (altered, or moved from another key)" in out.rejected[0].reason
    assert vip(catalog, WEB) is None
    assert vip(catalog, DB) is None
    # Re-signed by a key of no site of this mesh: refused (held for a signer that never comes).
    stranger = Signers(Mesh())
    out = catalog.put(KEYS.vip(*WEB), allocation(stranger, WEB, "240.240.0.2"))
    assert "which no site record seen lists" in out.rejected[0].reason
    assert vip(catalog, WEB) is None


def test_unsigned_vip_records_are_refused_in_require_and_taken_in_accept(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    out = catalog.put(KEYS.vip(*WEB), allocation(None, WEB, "240.240.0.1"))
    assert out.rejected[0].reason == "the VIP record is not signed (registry.signatures is require)"
    assert vip(catalog) is None
    catalog, _ = reader(mesh, Mode.ACCEPT)
    with_sites(catalog, signers, "east")
    assert not catalog.put(KEYS.vip(*WEB), allocation(None, WEB, "240.240.0.1")).rejected
    assert vip(catalog) == ("240.240.0.1",)
    # Once signed by its allocator, an unsigned replacement is a forgery even in accept mode.
    assert not catalog.put(KEYS.vip(*WEB), allocation(signers, WEB, "240.240.0.1")).rejected
    out = catalog.put(KEYS.vip(*WEB), allocation(None, WEB, "240.240.0.9"))
    assert "an unsigned one is not from it" in out.rejected[0].reason
    assert vip(catalog) is None


def test_altered_and_replayed_vip_records_are_refused(mesh: Mesh, signers: Signers) -> None:
    catalog, _ = reader(mesh)
    with_sites(catalog, signers, "east")
    old = allocation(signers, WEB, "240.240.0.1")
    catalog.put(KEYS.vip(*WEB), old)
    catalog.put(KEYS.vip(*WEB), allocation(signers, WEB, "240.240.0.3"))
    assert "a replayed old record" in catalog.put(KEYS.vip(*WEB), old).rejected[0].reason
    altered = allocation(signers, WEB, "240.240.0.3").replace(b"240.240.0.3", b"240.240.0.4", 1)
    assert "does not match the record" in catalog.put(KEYS.vip(*WEB), altered).rejected[0].reason


def test_a_vip_record_before_its_signers_site_record_is_held_and_taken_when_it_comes(mesh: Mesh,
                                                                                      signers: Signers) -> None:
    catalog, verifier = reader(mesh)
    # A listing: mesh/vips/ sorts before sites/, so the allocation comes first.
    out = catalog.put(KEYS.vip(*WEB), allocation(signers, WEB, "240.240.0.1", by="west"), 7)
    assert "held until one does" in out.rejected[0].reason
    with_sites(catalog, signers, "east")
    assert replay_held(catalog, verifier, "east") == []  # not east's signer: still held
    assert vip(catalog) is None
    with_sites(catalog, signers, "west")
    assert replay_held(catalog, verifier, "west") == []
    assert vip(catalog) == ("240.240.0.1",)
    assert verifier.retry("west") == []  # taken: no longer held


def test_held_vip_records_are_bounded_and_dropped_when_no_signer_comes(mesh: Mesh, signers: Signers,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(viprecords, "MAX_HELD_PER_KID", 3)
    monkeypatch.setattr(viprecords, "MAX_HELD", 5)
    clock = Clock()
    catalog, verifier = reader(mesh, clock=clock)
    for i in range(10):  # a flood under one key id: at most 3 held
        catalog.put(KEYS.vip("shop", f"s{i}"), allocation(signers, ("shop", f"s{i}"), f"240.240.1.{i}", by="west"))
    for i in range(10):  # and under another: the mesh-wide bound
        catalog.put(KEYS.vip("ops", f"s{i}"), allocation(signers, ("ops", f"s{i}"), f"240.240.2.{i}", by="edge"))
    assert verifier._vips.held == 5
    with_sites(catalog, signers, "west")
    assert len(verifier.retry("west")) == 3
    clock.now += viprecords.HOLD_FOR
    with_sites(catalog, signers, "edge")
    assert verifier.retry("edge") == []  # held too long: dropped
    assert verifier._vips.held == 0


def test_a_revoked_sites_vip_records_are_refused(mesh: Mesh, signers: Signers) -> None:
    catalog, verifier = reader(mesh)
    with_sites(catalog, signers, "east")
    op = signers.operator()
    doc = Revocations().revoke("east", "key leaked", 1.0)
    key = revocations_key(KEYS)
    verifier.document(key, op.sign(key, revocations_body(doc, op.cert_pem()), signers.at()))
    out = catalog.put(KEYS.vip(*WEB), allocation(signers, WEB, "240.240.0.1"))
    assert out.rejected[0].reason == "signed by site east, which is revoked by the operator (key leaked)"


def test_vips_outlive_the_site_that_allocated_them_and_are_due_for_resigning(mesh: Mesh, signers: Signers) -> None:
    catalog, verifier = reader(mesh)
    with_sites(catalog, signers, "east", "west")
    catalog.put(KEYS.vip(*WEB), allocation(signers, WEB, "240.240.0.1", by="west"))
    west_kid, east_kid = signers.signer("west").kid, signers.signer("east").kid
    assert not verifier.resign_due(west_kid, "east")
    assert not verifier.resign_due(east_kid, "east")
    catalog.delete(KEYS.site("west"))
    verifier.deleted(KEYS.site("west"))
    catalog.forget()  # a relisting verifies again: the departed site's signature still does
    assert not catalog.put(KEYS.vip(*WEB), allocation(signers, WEB, "240.240.0.1", by="west")).rejected
    assert vip(catalog) == ("240.240.0.1",)
    assert verifier.resign_due(west_kid, "east")  # the allocators that remain sign it again
    # A renewed signer: east's site record lists the new one first; the old one's records are east's to re-sign.
    old = signers.signer("east")
    signers._signers["east"] = new = type(old)(*_issue(mesh, "east"))
    record = signers.site_record(mesh.site("east"), signers=(new.cert_pem(), old.cert_pem()))
    assert not catalog.put(KEYS.site("east"), record).rejected
    assert verifier.resign_due(old.kid, "east")
    assert not verifier.resign_due(new.kid, "east")
    assert not verifier.resign_due(old.kid, "edge")


def _issue(mesh: Mesh, site: str) -> tuple[object, object, object]:
    from federation.pki.signing import issue_registry_signer

    s = issue_registry_signer(mesh.site_ca(site), now())
    return s.cert, s.key, s.chain
