"""Test helpers: a small mesh PKI made by our own issuing code, and MeshViews whose sites carry it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from federation.core.records import Endpoint, EndpointPort, Gateway, Locality, ServiceExport, ServicePort, Site
from federation.core.view import MeshView
from federation.pki.issuing import Authority, Issued, cert_pem, issue_gateway, new_root, new_site_ca

TD = "mesh.example"
_HERE = Locality()


def now() -> dt.datetime:
    """The current UTC time."""
    return dt.datetime.now(dt.UTC)


@dataclass
class Mesh:
    """A root CA and site CAs issued from it, for tests."""

    trust_domain: str = TD
    root: Authority = field(init=False)
    sites: dict[str, Authority] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = new_root(self.trust_domain, now())

    def site_ca(self, name: str) -> Authority:
        """The site CA of `name`, made on first use."""
        if name not in self.sites:
            self.sites[name] = new_site_ca(self.root, name, now())
        return self.sites[name]

    def leaf(self, site: str, gateway: str = "gw", lifetime: dt.timedelta = dt.timedelta(hours=24),
             at: dt.datetime | None = None) -> Issued:
        """A gateway leaf for `site`."""
        return issue_gateway(self.site_ca(site), gateway, at or now(), lifetime)

    def bundle_pem(self) -> bytes:
        """The trust bundle (root certificate) as PEM."""
        return cert_pem(self.root.cert)

    def site(self, name: str, network: str | None = None, gateways: tuple[Gateway, ...] = (),
             locality: Locality = _HERE) -> Site:
        """A site record whose ca_chain is the site's intermediate."""
        return Site(name=name, network=network or f"net-{name}", locality=locality, gateways=gateways,
                    ca_chain=cert_pem(self.site_ca(name).cert).decode())

    def write_leaf(self, directory: Path, site: str, gateway: str = "gw") -> tuple[Path, Path, Path]:
        """Write chain, key and bundle PEM files for a gateway leaf; return their paths."""
        issued = self.leaf(site, gateway)
        directory.mkdir(parents=True, exist_ok=True)
        chain, key, bundle = directory / "gw.crt", directory / "gw.key", directory / "bundle.pem"
        chain.write_bytes(issued.chain_pem())
        key.write_bytes(issued.key_pem())
        bundle.write_bytes(self.bundle_pem())
        return chain, key, bundle


def export(site: str, ns: str, name: str, port: int, addresses: tuple[str, ...] = ("127.0.0.1",),
           port_name: str = "tcp", endpoint_ports: tuple[int, ...] = (), ready: bool = True) -> ServiceExport:
    """An export with one service port and one endpoint per target port (all at `addresses`)."""
    targets = endpoint_ports or (port,)
    endpoints = tuple(
        Endpoint(addresses=addresses, ports=(EndpointPort(port_name, p),), ready=ready) for p in targets
    )
    return ServiceExport(site=site, namespace=ns, name=name, ports=(ServicePort(port_name, port),),
                         endpoints=endpoints)


def view(sites: list[Site], exports: list[ServiceExport] = ()) -> MeshView:  # type: ignore[assignment]
    """A MeshView of `sites` and `exports`."""
    return MeshView(sites={s.name: s for s in sites},
                    exports={(e.site, e.namespace, e.name): e for e in exports})


def forge_leaf(mesh: Mesh, signer: str, claimed: str) -> Issued:
    """A leaf signed by `signer`'s site CA whose SPIFFE ID claims a gateway of site `claimed`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    real = mesh.leaf(signer)
    cert = real.cert
    builder = (
        x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
        .public_key(real.key.public_key()).serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            value = x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{mesh.trust_domain}/site/{claimed}/gateway/gw")])
        builder = builder.add_extension(value, critical=ext.critical)
    return Issued(builder.sign(mesh.site_ca(signer).key, hashes.SHA256()), real.key, real.chain)


def write_issued(directory: Path, issued: Issued) -> tuple[Path, Path]:
    """Write an issued leaf's chain and key; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    chain, key = directory / "leaf.crt", directory / "leaf.key"
    chain.write_bytes(issued.chain_pem())
    key.write_bytes(issued.key_pem())
    return chain, key


# ---------------------------------------------------------------- signed records


class Signers:
    """Registry signers per site and an operator, issued from a Mesh, and records signed the way agents sign."""

    def __init__(self, mesh: Mesh) -> None:
        from federation.core.keys import Keys

        self.mesh = mesh
        self.keys = Keys()
        self._signers: dict[str, object] = {}
        self.clock = int(now().timestamp() * 1000)
        """Milliseconds handed to the next signature (grows with each one: later versions sign later)."""

    def signer(self, site: str):  # type: ignore[no-untyped-def]
        """The registry signer of `site`, issued on first use."""
        from federation.pki.signing import issue_registry_signer

        if site not in self._signers:
            self._signers[site] = issue_registry_signer(self.mesh.site_ca(site), now())
        return self._signers[site]

    def operator(self, name: str = "ops"):  # type: ignore[no-untyped-def]
        """An operator signer issued from the mesh root."""
        from federation.pki.signing import issue_operator

        key = f"operator:{name}"
        if key not in self._signers:
            self._signers[key] = issue_operator(self.mesh.root, name, now())
        return self._signers[key]

    def at(self) -> int:
        self.clock += 1
        return self.clock

    def site_record(self, site: Site, listed: tuple[str, ...] | None = None, by: str | None = None,
                    signers: tuple[str, ...] | None = None) -> bytes:
        """The signed site record of `site` (signed by site `by`'s signer, default its own)."""
        import json

        from federation.core.codec import encode_site

        obj = json.loads(encode_site(site))
        obj["signers"] = list(signers or (self.signer(by or site.name).cert_pem(),))
        if listed is not None:
            obj["records"] = list(listed)
        return self.signer(by or site.name).sign(self.keys.site(site.name), obj, self.at())  # type: ignore[no-any-return]

    def export_record(self, export: ServiceExport, by: str | None = None, key: str | None = None) -> bytes:
        """The signed export record (signed by site `by`'s signer, default the export's own site)."""
        import json

        from federation.core.codec import encode_export

        key = key or self.keys.service(export.site, export.namespace, export.name)
        return self.signer(by or export.site).sign(key, json.loads(encode_export(export)), self.at())  # type: ignore[no-any-return]
