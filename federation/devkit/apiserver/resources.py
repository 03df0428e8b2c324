"""What the development API server serves: built-in resources, resources defined by CRDs, and discovery.

Pure data. A `Resource` is one (group, plural) with its served versions; custom resources come from
CustomResourceDefinition objects exactly as `kubectl apply -f deploy/kubernetes/crds.yaml` sends them.
Discovery documents are the legacy (non-aggregated) ones, which every kubectl understands.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SERVER_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-meshfed-dev", "gitCommit": "meshfed",
                  "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23",
                  "compiler": "gc", "platform": "linux/amd64"}
"""What `/version` answers: a recent release, so kubectl's version skew check is quiet."""

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class Resource:
    """One resource type: where it lives in the API, its kind, and (for custom resources) its schemas."""

    group: str
    plural: str
    kind: str
    versions: tuple[str, ...]
    """Served versions, the preferred (highest priority) first."""
    storage: str
    singular: str = ""
    namespaced: bool = True
    status: bool = False
    """Has a status subresource: writes to the object keep .status, writes to /status keep the rest."""
    builtin: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Version -> openAPIV3Schema (custom resources only)."""
    columns: Mapping[str, tuple[Mapping[str, Any], ...]] = field(default_factory=dict)
    """Version -> additionalPrinterColumns (custom resources only)."""

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def group_resource(self) -> str:
        """`plural.group` as error messages name it (`services` for the core group)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


BUILTINS = (
    Resource("", "namespaces", "Namespace", ("v1",), "v1", "namespace", namespaced=False, status=True,
             short_names=("ns",)),
    Resource("", "services", "Service", ("v1",), "v1", "service", status=True, short_names=("svc",),
             categories=("all",)),
    Resource("discovery.k8s.io", "endpointslices", "EndpointSlice", ("v1",), "v1", "endpointslice"),
    Resource("", "pods", "Pod", ("v1",), "v1", "pod", status=True, short_names=("po",), categories=("all",)),
    Resource("apiextensions.k8s.io", "customresourcedefinitions", "CustomResourceDefinition", ("v1",), "v1",
             "customresourcedefinition", namespaced=False, status=True, short_names=("crd", "crds")),
)


class CrdError(ValueError):
    """A CustomResourceDefinition the server cannot serve; the message says why."""


def from_crd(crd: Mapping[str, Any]) -> Resource:
    """The resource a CustomResourceDefinition defines; CrdError if it is malformed."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (isinstance(group, str) and group and isinstance(plural, str) and plural and isinstance(kind, str)):
        raise CrdError("spec.group, spec.names.plural and spec.names.kind are required")
    expected = f"{plural}.{group}"
    if (crd.get("metadata") or {}).get("name") != expected:
        raise CrdError(f'metadata.name: Invalid value: must be spec.names.plural+"."+spec.group ({expected})')
    versions = [v for v in spec.get("versions") or [] if isinstance(v, Mapping)]
    served = [v for v in versions if v.get("served")]
    storage = [v["name"] for v in versions if v.get("storage")]
    if not served or len(storage) != 1:
        raise CrdError("spec.versions: needs at least one served version and exactly one storage version")
    schemas: dict[str, Mapping[str, Any]] = {}
    columns: dict[str, tuple[Mapping[str, Any], ...]] = {}
    status = False
    for v in served:
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if not isinstance(schema, Mapping):
            raise CrdError(f"spec.versions[{v['name']}].schema.openAPIV3Schema: Required value")
        schemas[v["name"]] = schema
        columns[v["name"]] = tuple(c for c in v.get("additionalPrinterColumns") or [] if isinstance(c, Mapping))
        status = status or "status" in (v.get("subresources") or {})
    return Resource(
        group=group, plural=plural, kind=kind, versions=tuple(sorted((v["name"] for v in served), key=version_rank)),
        storage=storage[0], singular=str(names.get("singular") or kind.lower()),
        namespaced=spec.get("scope", "Namespaced") == "Namespaced", status=status, builtin=False,
        short_names=tuple(names.get("shortNames") or ()), categories=tuple(names.get("categories") or ()),
        schemas=schemas, columns=columns,
    )  # fmt: skip


def version_rank(version: str) -> tuple[int, int, int, str]:
    """Sort key of Kubernetes version priority: GA before beta before alpha, higher numbers first."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    stage = {"alpha": 2, "beta": 1, None: 0}[m.group(2)]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0), version)


# ---------------------------------------------------------------- discovery documents


def api_versions(address: str) -> dict[str, Any]:
    """`GET /api`."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}


def group_list(resources: Iterable[Resource]) -> dict[str, Any]:
    """`GET /apis`: every named group with its versions, the preferred one first."""
    groups: dict[str, list[str]] = {}
    for r in resources:
        if r.group:
            have = groups.setdefault(r.group, [])
            have.extend(v for v in r.versions if v not in have)
    out = []
    for group, versions in sorted(groups.items()):
        ordered = sorted(versions, key=version_rank)
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered]
        out.append({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}


def group(resources: Iterable[Resource], name: str) -> dict[str, Any] | None:
    """`GET /apis/<group>`, or None if nothing is served in it."""
    for g in group_list(resources)["groups"]:
        if g["name"] == name:
            return {"kind": "APIGroup", "apiVersion": "v1", **g}
    return None


def resource_list(resources: Iterable[Resource], group_name: str, version: str) -> dict[str, Any] | None:
    """`GET /api/v1` or `GET /apis/<group>/<version>`, or None if that version is not served."""
    entries: list[dict[str, Any]] = []
    for r in resources:
        if r.group != group_name or version not in r.versions:
            continue
        entry: dict[str, Any] = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                                 "kind": r.kind, "verbs": list(ALL_VERBS)}
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        entries.append(entry)
        if r.status:
            entries.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                            "kind": r.kind, "verbs": list(STATUS_VERBS)})
    if not entries:
        return None
    gv = f"{group_name}/{version}" if group_name else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": entries}
