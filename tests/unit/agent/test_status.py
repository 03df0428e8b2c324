"""`meshfed status` warns ahead of every expiry: roots 60 days, the site CA 30 days, and a self-renewing
certificate past its renewal point (its renewal is failing)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

from federation.agent.reporting import format_status
from federation.agent.signing import SigningKeys
from federation.agent.status import expiries
from federation.pki.issuing import cert_pem, new_root, new_site_ca
from federation.pki.verifying import TrustBundle
from federation.runtime.values import Value
from gateway.tls import CertificateStore
from tests.pkihelp import now


def test_every_certificate_is_listed_and_warned_about_ahead(tmp_path: Path) -> None:
    root = new_root("mesh.example", now(), dt.timedelta(days=50))  # inside the 60 days of warning
    site_ca = new_site_ca(root, "east", now(), dt.timedelta(days=20))  # inside the 30 days of warning
    store = CertificateStore(site_ca, "gw", tmp_path / "gw", lifetime=dt.timedelta(hours=2))
    signing = SigningKeys(site_ca, tmp_path / "signing")
    identity = SimpleNamespace(trust=Value(TrustBundle.from_pem(cert_pem(root.cert))), signing=signing)
    plane = SimpleNamespace(certs=store)
    rows = {r["what"]: r for r in expiries(plane, identity, now())}  # type: ignore[arg-type]
    assert set(rows) == {"mesh root 1 of 1", "site CA", "gateway certificate", "registry signer"}
    assert rows["mesh root 1 of 1"]["warning"].startswith("mesh root 1 of 1 expires in 50 days")
    assert rows["site CA"]["warning"].startswith("site CA expires in 20 days")
    assert rows["gateway certificate"]["warning"] is None  # fresh: renews itself at half life
    later = now() + dt.timedelta(hours=1, minutes=20)  # past half life by more than a tenth: renewal failing
    stuck = {r["what"]: r for r in expiries(plane, identity, later)}  # type: ignore[arg-type]
    assert "its renewal is failing" in stuck["gateway certificate"]["warning"]
    gone = {r["what"]: r for r in expiries(plane, identity, now() + dt.timedelta(days=51))}  # type: ignore[arg-type]
    assert "EXPIRED" in gone["mesh root 1 of 1"]["warning"]
    text = format_status({"site": "east", "kind": "vm", "network": "n", "locality": "",
                          "registry": {"endpoints": ["e"], "stale": False, "synced": True, "heldBy": "agent x"},
                          "certificates": list(rows.values())})
    assert text.splitlines()[0].startswith("WARNING: mesh root 1 of 1 expires in 50 days")
    assert "WARNING: another agent holds this site (agent x)" in text
    assert "CERTIFICATES" in text
    store.close()
