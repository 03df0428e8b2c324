"""The OpenAPI v3 documents kubectl reads before it writes: `/openapi/v3` and one document per group version.

Pure. kubectl checks in them that the PATCH operation of a kind takes the `fieldValidation` query
parameter; when it does, it leaves validation to the server (which prunes custom resources and says
what it dropped) instead of downloading schemas. Custom resources carry their CRD schemas, so
`kubectl explain serviceimport.spec` works; built-in kinds carry no schema, and kubectl computes
their strategic merge patches from its own compiled-in types, as it does with any server.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from federation.devkit.apiserver.resources import Resource

_QUERY = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def root(resources: Iterable[Resource]) -> dict[str, Any]:
    """`GET /openapi/v3`: where each group version's document lives, with a hash that changes with it."""
    rs = list(resources)
    paths = {}
    for gv in sorted({_gv_path(r.group, v) for r in rs for v in r.versions}):
        group, version = _split(gv)
        doc = group_version(rs, group, version)
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16].upper()
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
    return {"paths": paths}


def group_version(resources: Iterable[Resource], group: str, version: str) -> dict[str, Any] | None:
    """The OpenAPI 3.0 document of one group version, or None if nothing is served there."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for r in resources:
        if r.group != group or version not in r.versions:
            continue
        gvk = {"group": r.group, "version": version, "kind": r.kind}
        ref = f"{_reverse(r.group)}.{version}.{r.kind}"
        if r.schemas.get(version):
            schemas[ref] = {**r.schemas[version], "x-kubernetes-group-version-kind": [gvk]}
        base = f"/{_gv_path(r.group, version)}" + ("/namespaces/{namespace}" if r.namespaced else "")
        if ref not in schemas:
            ref = ""
        one = {verb: _operation(verb, gvk, ref) for verb in ("get", "put", "patch", "delete")}
        paths[f"{base}/{r.plural}/{{name}}"] = one
        paths[f"{base}/{r.plural}"] = {verb: _operation(verb, gvk, ref) for verb in ("get", "post")}
        if r.status:
            paths[f"{base}/{r.plural}/{{name}}/status"] = {verb: _operation(verb, gvk, ref)
                                                             for verb in ("get", "put", "patch")}
    if not paths:
        return None
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0-meshfed-dev"},
            "paths": paths, "components": {"schemas": schemas}}


def _operation(verb: str, gvk: dict[str, str], ref: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{verb}{gvk['kind']}",
        "parameters": [{"name": p, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
                       for p in (_QUERY if verb in ("put", "patch", "post") else ("pretty",))],
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": {"get": "get", "put": "put", "patch": "patch", "delete": "delete",
                                "post": "post"}[verb],
        "x-kubernetes-group-version-kind": gvk,
    }  # fmt: skip
    if ref:
        op["responses"]["200"]["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
    return op


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _split(gv: str) -> tuple[str, str]:
    parts = gv.split("/")
    return ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])


def _reverse(group: str) -> str:
    """`multicluster.x-k8s.io` -> `io.x-k8s.multicluster`, as OpenAPI definition names are written."""
    return ".".join(reversed(group.split("."))) if group else "io.k8s.api.core"
