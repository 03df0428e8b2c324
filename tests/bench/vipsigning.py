"""The cost of signed VIP records (issue 13), measured against unsigned ones in the same run; no etcd.

Write: a bulk allocation (40 services per compare-and-swap, one allocation and one claim each) encoded, then
encoded and signed. Read: a listing of every VIP record as a fresh reader sees it (mesh/vips/ sorts before the
site records, so every record is held, then verified when the site records come) against decoding alone.

    .venv/bin/python -m tests.bench.vipsigning [--services 5000] [--sites 4]
    (also printed by `python -m tests.bench.registry --signing-only`)
"""

from __future__ import annotations

import argparse
import time

from federation.core.catalog import Catalog, Listed
from federation.core.codec import encode_site
from federation.core.keys import Keys
from federation.core.verification import Mode
from federation.core.vips import Allocation, Claim, encode_allocation, encode_claim
from federation.pki.records import RecordVerifier
from federation.pki.verifying import TrustBundle
from tests.pkihelp import Mesh, Signers

KEYS = Keys()
BATCH = 40


def vip_costs(services: int = 5000, sites: int = 4) -> dict[str, float]:
    """Seconds per VIP record to write and to read, unsigned and signed; bytes per bulk transaction."""
    mesh = Mesh()
    signers = Signers(mesh)
    kits = [signers.signer(f"site{i}") for i in range(sites)]
    at = int(time.time() * 1000)
    plain: dict[str, bytes] = {}
    signed: dict[str, bytes] = {}
    t_encode = t_sign = 0.0
    for i in range(services):
        service = ("bench", f"svc{i}")
        address = f"240.{240 + i // 65536}.{i // 256 % 256}.{i % 256}"
        kit = kits[i // BATCH % sites]  # each bulk transaction by one site's allocator
        t0 = time.perf_counter()
        records = {KEYS.claim(address): encode_claim(Claim(address, service, 1.0)),
                   KEYS.vip(*service): encode_allocation(Allocation(service, (address,)))}
        t1 = time.perf_counter()
        for key, body in records.items():
            signed[key] = kit.sign(key, body, at)
        t2 = time.perf_counter()
        t_encode += t1 - t0
        t_sign += t2 - t1
        plain.update(records)
    site_records = {KEYS.site(f"site{i}"): signers.site_record(mesh.site(f"site{i}"), signers=(k.cert_pem(),))
                    for i, k in enumerate(kits)}
    plain_sites = {KEYS.site(f"site{i}"): encode_site(mesh.site(f"site{i}")) for i in range(sites)}
    n = len(plain)

    def listing(values: dict[str, bytes], verify: bool) -> float:
        verifier = RecordVerifier(KEYS, TrustBundle.from_pem(mesh.bundle_pem()), Mode.REQUIRE) if verify else None
        catalog = Catalog(KEYS, check=verifier.check if verifier is not None else None)
        t0 = time.perf_counter()
        out = catalog.resync({k: Listed(v, 1) for k, v in values.items()}, 1)  # mesh/vips/ first, then sites/
        if verifier is not None:
            for site in sorted(k.rsplit("/", 1)[1] for k in site_records):
                for key, value, _ in verifier.retry(site):  # what the mirror does after a listing
                    catalog.forget([key])
                    out.rejected += catalog.put(key, value, 1).rejected
            out.rejected = [r for r in out.rejected if "held until" not in r.reason]
        took = time.perf_counter() - t0
        assert not out.rejected, out.rejected[:3]
        assert len(catalog.view().vips) == services
        return took

    read_plain = listing({**plain, **plain_sites}, verify=False)
    bare = _bare_verify(kits[0], min(n, 2000))
    read_signed = listing({**signed, **site_records}, verify=True)
    batch_keys = [k for i, k in enumerate(plain) if i < 2 * BATCH]
    return {"services": services, "records": n, "encode": t_encode / n, "sign": t_sign / n,
            "decode": read_plain / n, "verify": read_signed / n, "bare": bare,
            "txn_plain": sum(len(plain[k]) for k in batch_keys), "txn_signed": sum(len(signed[k]) for k in batch_keys)}


def print_vips(c: dict[str, float]) -> None:
    us = 1e6
    print(f"signed VIP records: {c['services']:.0f} services, {c['records']:.0f} records (allocations and claims)")
    print(f"  write: encode {c['encode'] * us:.0f} us/record, + sign {c['sign'] * us:.0f} us/record "
          f"(ratio {(c['encode'] + c['sign']) / c['encode']:.2f}x); a bulk transaction of {BATCH} services "
          f"{c['txn_plain'] / 1024:.1f} KiB unsigned, {c['txn_signed'] / 1024:.1f} KiB signed")
    print(f"  read (a fresh reader's listing: held, then verified when the site records come): decode "
          f"{c['decode'] * us:.0f} us/record, decode + verify {c['verify'] * us:.0f} us/record "
          f"(ratio {c['verify'] / c['decode']:.2f}x); the reference, one bare ECDSA P-256 verify: "
          f"{c['bare'] * us:.0f} us, so verifying costs {(c['verify'] - c['decode']) / c['bare']:.2f} of them")


def _bare_verify(signer: object, count: int) -> float:
    """Seconds for one ECDSA P-256/SHA-256 verify through OpenSSL, the floor of verifying a record."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key, cert = signer.key, signer.cert  # type: ignore[attr-defined]
    data = b"x" * 200
    sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
    public = cert.public_key()
    t0 = time.perf_counter()
    for _ in range(count):
        public.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    return (time.perf_counter() - t0) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=4, help="allocating sites (signers)")
    args = parser.parse_args()
    print_vips(vip_costs(args.services, args.sites))


if __name__ == "__main__":
    main()
