"""The publisher's seal step: signs what changed, keeps stored bytes otherwise, lists signers and exports."""

from __future__ import annotations

import json

from federation.core import envelope
from federation.core.keys import Keys
from federation.registry.publishing import desired_records
from federation.registry.sealing import Seal, owner_of, seal, stamped
from tests.pkihelp import Mesh, Signers, export

KEYS = Keys()


def kit(signers: Signers, site: str = "east") -> Seal:
    s = signers.signer(site)
    return Seal(s.kid, (s.cert_pem(),), s.sign)


def test_nothing_changed_nothing_is_signed_again() -> None:
    mesh = Mesh()
    signers = Signers(mesh)
    desired = desired_records(KEYS, mesh.site("east"), [export("east", "shop", "web", 80)], {}, 1.0)
    first = seal(KEYS, "east", desired, {}, kit(signers), 1000, owner="me")
    again = seal(KEYS, "east", desired, first, kit(signers), 2000, owner="me")
    assert again == first
    site = json.loads(envelope.split(first[KEYS.site("east")]).body)
    assert site["records"] == ["shop/web"]
    assert site["signers"] == [signers.signer("east").cert_pem()]
    assert owner_of(first[KEYS.site("east")]) == "me"


def test_a_change_or_a_new_signer_signs_again_and_later() -> None:
    mesh = Mesh()
    signers = Signers(mesh)
    key = KEYS.service("east", "shop", "web")
    desired = desired_records(KEYS, mesh.site("east"), [export("east", "shop", "web", 80)], {}, 1.0)
    first = seal(KEYS, "east", desired, {}, kit(signers), 1000)
    changed = desired_records(KEYS, mesh.site("east"), [export("east", "shop", "web", 81)], {}, 1.0)
    second = seal(KEYS, "east", changed, first, kit(signers), 500)  # a clock that went back
    assert second[key] != first[key]
    assert stamped(second[key]).at == 1001  # type: ignore[union-attr]
    renewed = Signers(mesh)  # another signer of the same site
    third = seal(KEYS, "east", changed, second, kit(renewed), 3000)
    assert stamped(third[key]).kid == renewed.signer("east").kid  # type: ignore[union-attr]
