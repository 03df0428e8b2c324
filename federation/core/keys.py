"""The etcd key layout under one prefix (DESIGN.md: every key a site writes is under its own prefix). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from federation.core.errors import RecordError
from federation.core.records import check_ip, check_label

DEFAULT_PREFIX = "/meshfed/v1"


@dataclass(frozen=True, slots=True)
class SiteKey:
    """A parsed `<prefix>/sites/<site>` key."""

    site: str


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """A parsed `<prefix>/sites/<site>/services/<ns>/<name>` key."""

    site: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class HeartbeatKey:
    """A parsed `<prefix>/sites/<site>/heartbeat` key: the site's heartbeat (propagation lag), beside its record."""

    site: str


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """A parsed `<prefix>/sites/<site>/services/<ns>/<name>/endpoints/<index>` key: one endpoint chunk."""

    site: str
    namespace: str
    name: str
    index: int


@dataclass(frozen=True, slots=True)
class VipKey:
    """A parsed `<prefix>/mesh/vips/services/<ns>/<name>` key: the VIP allocation of one service."""

    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class ClaimKey:
    """A parsed `<prefix>/mesh/vips/addresses/<address>` key: the claim of one VIP address."""

    address: str


Parsed = SiteKey | ServiceKey | ChunkKey | HeartbeatKey | VipKey | ClaimKey

MAX_CHUNKS = 10_000
"""More endpoint chunks than any export needs (100 endpoints each: a million endpoints)."""


@dataclass(frozen=True, slots=True)
class Keys:
    """The key layout under one prefix (DESIGN.md: every key a site writes is under its own prefix)."""

    prefix: str = DEFAULT_PREFIX

    def root(self) -> str:
        """Everything meshfed stores."""
        return self.prefix + "/"

    def sites(self) -> str:
        """Every site's records."""
        return f"{self.prefix}/sites/"

    def site(self, site: str) -> str:
        """The site record."""
        return f"{self.prefix}/sites/{site}"

    def site_children(self, site: str) -> str:
        """Prefix of the keys a site writes below its record."""
        return f"{self.prefix}/sites/{site}/"

    def heartbeat(self, site: str) -> str:
        """The site's heartbeat: rewritten every `registry.heartbeat_interval`, read for the lag only."""
        return f"{self.prefix}/sites/{site}/heartbeat"

    def service(self, site: str, namespace: str, name: str) -> str:
        """One site's export of one service."""
        return f"{self.prefix}/sites/{site}/services/{namespace}/{name}"

    def chunk(self, site: str, namespace: str, name: str, index: int) -> str:
        """One endpoint chunk of a site's export."""
        return f"{self.prefix}/sites/{site}/services/{namespace}/{name}/endpoints/{index}"

    def mesh(self, *parts: str) -> str:
        """A mesh-wide object."""
        return "/".join((self.prefix, "mesh", *parts))

    def vip(self, namespace: str, name: str) -> str:
        """The VIP allocation of a service."""
        return f"{self.prefix}/mesh/vips/services/{namespace}/{name}"

    def claim(self, address: str) -> str:
        """The claim of one VIP address."""
        return f"{self.prefix}/mesh/vips/addresses/{address}"

    def parse(self, key: str) -> Parsed | None:
        """What a key names, or None for keys of no record this reader knows (other mesh objects).

        Raises RecordError for a key under `sites/` or `mesh/vips/` that does not fit the layout.
        """
        head = f"{self.prefix}/sites/"
        if not key.startswith(head):
            return self._parse_mesh(key)
        parts = key[len(head):].split("/")
        if len(parts) == 1:
            check_label("site", parts[0])
            return SiteKey(parts[0])
        if len(parts) == 2 and parts[1] == "heartbeat":
            check_label("site", parts[0])
            return HeartbeatKey(parts[0])
        if len(parts) == 4 and parts[1] == "services":
            site, _, ns, name = parts
            check_label("site", site)
            check_label("namespace", ns)
            check_label("service name", name)
            return ServiceKey(site, ns, name)
        if len(parts) == 6 and parts[1] == "services" and parts[4] == "endpoints":
            site, _, ns, name, _, index = parts
            check_label("site", site)
            check_label("namespace", ns)
            check_label("service name", name)
            if (not (index.isascii() and index.isdigit()) or int(index) >= MAX_CHUNKS  # isdigit alone takes "\u0663"
                    or (index != "0" and index.startswith("0"))):
                raise RecordError(f"key {key!r}: chunk index {index!r} is not a number below {MAX_CHUNKS}")
            return ChunkKey(site, ns, name, int(index))
        raise RecordError(f"key {key!r} does not fit the layout "
                         "sites/<site>[/heartbeat|/services/<ns>/<name>[/endpoints/<i>]]")

    def _parse_mesh(self, key: str) -> VipKey | ClaimKey | None:
        head = f"{self.prefix}/mesh/vips/"
        if not key.startswith(head):
            return None
        parts = key[len(head):].split("/")
        if len(parts) == 3 and parts[0] == "services":
            check_label("namespace", parts[1])
            check_label("service name", parts[2])
            return VipKey(parts[1], parts[2])
        if len(parts) == 2 and parts[0] == "addresses":
            check_ip("address", parts[1])
            return ClaimKey(parts[1])
        raise RecordError(f"key {key!r} does not fit the layout mesh/vips/(services/<ns>/<name>|addresses/<ip>)")
