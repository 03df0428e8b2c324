"""The etcd key layout under one prefix (DESIGN.md: every key a site writes is under its own prefix). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from federation.core.errors import RecordError
from federation.core.records import check_label

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

    def service(self, site: str, namespace: str, name: str) -> str:
        """One site's export of one service."""
        return f"{self.prefix}/sites/{site}/services/{namespace}/{name}"

    def mesh(self, *parts: str) -> str:
        """A mesh-wide object."""
        return "/".join((self.prefix, "mesh", *parts))

    def parse(self, key: str) -> SiteKey | ServiceKey | None:
        """What a key names, or None for keys outside the site layout (mesh objects).

        Raises RecordError for a key under `sites/` that does not fit the layout.
        """
        head = f"{self.prefix}/sites/"
        if not key.startswith(head):
            return None
        parts = key[len(head):].split("/")
        if len(parts) == 1:
            check_label("site", parts[0])
            return SiteKey(parts[0])
        if len(parts) == 4 and parts[1] == "services":
            site, _, ns, name = parts
            check_label("site", site)
            check_label("namespace", ns)
            check_label("service name", name)
            return ServiceKey(site, ns, name)
        raise RecordError(f"key {key!r} does not fit the layout sites/<site>[/services/<ns>/<name>]")
