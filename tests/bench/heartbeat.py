"""What a reader pays per heartbeat (the lag metric), against what it pays per real registry change.

A reader's catalog holds --sites signed sites of --exports exports each (verified with the real record
verifier, `registry.signatures: require`). Then, in the same run and process:
  - heartbeat: a signed heartbeat of one site arrives (catalog put: verify + decode) and the lag meter takes
    it; the view is NOT rebuilt (the bench checks that the view's generation does not move);
  - reference: a signed export of one site changes one endpoint (catalog put: verify + decode + conflict
    rule) and the reader takes the new view, as the mirror does once per burst.
Prints microseconds per event, the ratio, and the reader's CPU share at 1,000 sites for the default interval.

    .venv/bin/python -m tests.bench.heartbeat [--sites 200] [--exports 20] [--events 2000] [--interval 30]
"""

from __future__ import annotations

import argparse
import time

from prometheus_client import CollectorRegistry

from federation.core.catalog import Catalog
from federation.core.heartbeat import Heartbeat, encode_heartbeat
from federation.core.keys import Keys
from federation.core.verification import Mode
from federation.pki.records import RecordVerifier
from federation.pki.verifying import TrustBundle
from federation.registry.heartbeat import LagMeter
from tests.pkihelp import Mesh, Signers
from tests.util import export

KEYS = Keys()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=200)
    ap.add_argument("--exports", type=int, default=20)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--interval", type=float, default=30.0)
    a = ap.parse_args()
    mesh, rev = Mesh(), 0
    signers = Signers(mesh)
    cat = Catalog(KEYS, check=RecordVerifier(KEYS, TrustBundle.from_pem(mesh.bundle_pem()), Mode.REQUIRE).check)
    names = [f"s{i}" for i in range(a.sites)]
    for name in names:
        listed = tuple(f"shop/svc{j}" for j in range(a.exports))
        rev += 1
        cat.put(KEYS.site(name), signers.site_record(mesh.site(name, "net-a"), listed), rev)
        for j in range(a.exports):
            rev += 1
            e = export(name, name=f"svc{j}", addresses=tuple(f"10.0.{j}.{k}" for k in range(10)))
            cat.put(KEYS.service(name, "shop", f"svc{j}"), signers.export_record(e), rev)
    view = cat.view()
    meter = LagMeter(CollectorRegistry())
    # Sign everything first: the bench measures the reader, not the writers.
    beats = [signers.signer(names[i % a.sites]).sign(
        KEYS.heartbeat(names[i % a.sites]),
        encode_heartbeat(Heartbeat(names[i % a.sites], time.time(), a.interval)), signers.at())
        for i in range(a.events)]
    changes = []
    for i in range(a.events):
        e = export(names[i % a.sites], name="svc0", addresses=tuple(f"10.1.{i % 250}.{k}" for k in range(10)))
        changes.append((KEYS.service(e.site, "shop", "svc0"), signers.export_record(e)))

    start = time.perf_counter()
    for i, value in enumerate(beats):
        rev += 1
        out = cat.put(KEYS.heartbeat(names[i % a.sites]), value, rev)
        if out.beat is None or out.changed or out.events:
            raise SystemExit(f"a heartbeat was not taken as one: {out}")
        meter.take(out)
    beat_us = (time.perf_counter() - start) / a.events * 1e6
    assert cat.view().generation == view.generation, "a heartbeat made a new view"

    start = time.perf_counter()
    for key, value in changes:
        rev += 1
        out = cat.put(key, value, rev)
        assert out.events, out.rejected
        cat.view()
    change_us = (time.perf_counter() - start) / a.events * 1e6

    rate = 1000 / a.interval
    print(f"mesh: {a.sites} signed sites x {a.exports} exports (10 endpoints each), {a.events} events of each kind")
    print(f"heartbeat (verify + decode + lag meter, no view):  {beat_us:8.1f} us per heartbeat")
    print(f"reference (verify + decode + resolve + new view):  {change_us:8.1f} us per endpoint change")
    print(f"ratio heartbeat / change: {beat_us / change_us:.2f}")
    print(f"at 1,000 sites, interval {a.interval:g}s: {rate:.1f} heartbeats/s per reader = "
          f"{rate * beat_us / 1e4:.2f}% of one core")


if __name__ == "__main__":
    main()
