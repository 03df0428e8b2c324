"""Create, update, patch and delete as kube-apiserver performs them, on the store. No HTTP here.

Each write: status subresource separation, resourceVersion preconditions, metadata the client may not
set, the resource's admission (Service IPs, CRD schemas with pruning, CRDs registering their
resources), generation on spec changes, and no new resourceVersion when nothing changed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from federation.devkit.apiserver import admission, patching
from federation.devkit.apiserver.admission import Refused
from federation.devkit.apiserver.resources import CrdError, Resource, from_crd
from federation.devkit.apiserver.store import Key, Obj, Store, convert

_CLIENT_META = ("labels", "annotations", "finalizers", "ownerReferences")
"""The metadata a client may change on update; the rest is the server's."""


def rfc3339(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


class Operations:
    """The write verbs of one development API server."""

    def __init__(self, store: Store, ips: admission.ServiceIPs, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ips = ips
        self.clock = clock

    def create(self, resource: Resource, version: str, namespace: str, body: Any, *, dry_run: bool = False,
               keep_times: bool = False) -> tuple[Obj, list[str]]:
        """Store a new object; (the object at `version`, warnings). Refused(409) if it exists."""
        if not isinstance(body, dict):
            raise Refused(400, "BadRequest", "the body of the request is not a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if resource.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise Refused(400, "BadRequest", "the namespace of the provided object does not match the "
                                                 "namespace sent on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        admission.check_metadata(resource, obj)
        key = (namespace if resource.namespaced else "", meta["name"])
        if self.store.get(resource.plural, key) is not None:
            raise Refused(409, "AlreadyExists", f'{resource.group_resource} "{key[1]}" already exists')
        if resource.namespaced and not keep_times and self.store.get("namespaces", ("", namespace)) is None:
            raise Refused(404, "NotFound", f'namespaces "{namespace}" not found')
        if resource.status and not keep_times:
            obj.pop("status", None)
        admission.new_metadata(obj, rfc3339(self.clock()), keep_times)
        warnings = self._admit(resource, version, obj, None)
        return self._commit(resource, version, key, obj, None, dry_run), warnings

    def update(self, resource: Resource, version: str, key: Key, body: Any, subresource: str = "", *,
               dry_run: bool = False) -> tuple[Obj, list[str]]:
        """Replace an object (or its status); Refused(409) on a stale resourceVersion."""
        old = self._existing(resource, key)
        if not isinstance(body, dict):
            raise Refused(400, "BadRequest", "the body of the request is not a JSON object")
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise Refused(409, "Conflict", f'Operation cannot be fulfilled on {resource.group_resource} "{key[1]}": '
                                           "the object has been modified; please apply your changes to the latest "
                                           "version and try again")
        return self._replace(resource, version, key, old, copy.deepcopy(body), subresource, dry_run)

    def patch(self, resource: Resource, version: str, key: Key, body: Any, content_type: str,
              subresource: str = "", *, dry_run: bool = False) -> tuple[Obj, list[str]]:
        """Apply a merge, JSON or strategic merge patch (the last only to built-in kinds, as the API server)."""
        old = self._existing(resource, key)
        current = convert(old, resource, version)
        try:
            if content_type == patching.MERGE_PATCH:
                new = patching.merge_patch(current, body)
            elif content_type == patching.JSON_PATCH:
                new = patching.json_patch(current, body)
            elif content_type == patching.STRATEGIC_PATCH and resource.builtin:
                new = patching.strategic_merge_patch(current, body)
            else:
                raise Refused(415, "UnsupportedMediaType",
                              f"the body of the request was in an unknown format - accepted media types include: "
                              f"{patching.JSON_PATCH}, {patching.MERGE_PATCH}"
                              + ("" if not resource.builtin else f", {patching.STRATEGIC_PATCH}"))
        except patching.PatchError as exc:
            raise Refused(422, "Invalid", str(exc)) from None
        if not isinstance(new, dict):
            raise Refused(422, "Invalid", "the patch does not leave an object")
        rv = (new.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise Refused(409, "Conflict", "the object has been modified; please apply your changes to the "
                                           "latest version and try again")
        return self._replace(resource, version, key, old, new, subresource, dry_run)

    def delete(self, resource: Resource, key: Key, *, dry_run: bool = False) -> Obj:
        """Remove an object; a Namespace takes its objects with it, a CRD its resource."""
        obj = self._existing(resource, key)
        if dry_run:
            return copy.deepcopy(obj)
        if resource.plural == "namespaces":
            for plural, objs in list(self.store.objects.items()):
                for k in [k for k in sorted(objs) if k[0] == key[1]]:
                    self.delete(self.store.resources[plural], k)
        if resource.plural == "services":
            self.ips.release(obj)
        gone = self.store.delete(resource.plural, key)
        if resource.plural == "customresourcedefinitions":
            plural = str(((obj.get("spec") or {}).get("names") or {}).get("plural", ""))
            if plural in self.store.resources and not self.store.resources[plural].builtin:
                self.store.unregister(plural)
        return gone

    def put(self, obj: Obj) -> Obj:
        """A test hook: create or replace `obj` as another client would, status and given times kept."""
        kind, api_version = obj["kind"], obj.get("apiVersion", "")
        resource = next((r for r in self.store.resources.values()
                         if r.kind == kind and api_version.rsplit("/", 1)[0] == (r.group or api_version)), None)
        if resource is None:
            raise Refused(404, "NotFound", f"no resource serves kind {kind} ({api_version})")
        version = api_version.rsplit("/", 1)[-1]
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace", "")) if resource.namespaced else ""
        if ns and self.store.get("namespaces", ("", ns)) is None:
            self.create(self.store.resources["namespaces"], "v1", "", {"metadata": {"name": ns}})
        key = (ns, str(meta.get("name", "")))
        old = self.store.get(resource.plural, key)
        if old is None:
            obj = copy.deepcopy(obj)
            if resource.plural == "services" and (obj.get("spec") or {}).get("clusterIP") != "None":
                for f in ("clusterIP", "clusterIPs"):  # builders carry a made-up IP: allocate a real one
                    obj.get("spec", {}).pop(f, None)
            return self.create(resource, version, ns, obj, keep_times=True)[0]
        new = copy.deepcopy(obj)
        new["metadata"] = {**old["metadata"], **new.get("metadata", {})}
        new["metadata"].pop("resourceVersion", None)
        return self._replace(resource, version, key, old, new, "", False, whole=True)[0]

    # ------------------------------------------------------------ internals

    def _existing(self, resource: Resource, key: Key) -> Obj:
        old = self.store.get(resource.plural, key)
        if old is None:
            raise Refused(404, "NotFound", f'{resource.group_resource} "{key[1]}" not found')
        return old

    def _replace(self, resource: Resource, version: str, key: Key, old: Obj, new: Obj, subresource: str,
                 dry_run: bool, whole: bool = False) -> tuple[Obj, list[str]]:
        meta: Obj = new["metadata"] if isinstance(new.get("metadata"), dict) else {}
        kept = copy.deepcopy(old["metadata"])
        for k in _CLIENT_META:
            if k in meta:
                kept[k] = meta[k]
            elif not whole:
                kept.pop(k, None)
        new["metadata"] = kept
        if resource.status and not whole:
            if subresource == "status":  # only .status changes through the subresource
                new = {**copy.deepcopy(old), "status": new.get("status")}
            else:
                new["status"] = copy.deepcopy(old.get("status"))
            if new.get("status") is None:
                new.pop("status")
        admission.check_metadata(resource, new)
        warnings = self._admit(resource, version, new, old)
        stored_old = convert(old, resource, resource.storage)
        tracked = not resource.builtin or resource.plural == "customresourcedefinitions"
        if tracked and _spec_of(new) != _spec_of(stored_old):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if convert(new, resource, resource.storage) == stored_old:
            return convert(old, resource, version), warnings  # nothing changed: no new resourceVersion
        return self._commit(resource, version, key, new, old, dry_run), warnings

    def _admit(self, resource: Resource, version: str, new: Obj, old: Obj | None) -> list[str]:
        new["apiVersion"], new["kind"] = resource.api_version(version), resource.kind
        warnings: list[str] = []
        if resource.plural == "services":
            admission.service(resource, new, old, self.ips)
        elif resource.plural == "namespaces":
            admission.namespace(new)
        elif resource.plural == "customresourcedefinitions":
            try:
                defined = from_crd(new)
            except CrdError as exc:
                raise admission.invalid(resource, str(new["metadata"].get("name")), [str(exc)]) from None
            other = self.store.resources.get(defined.plural)
            if other is not None and (other.builtin or other.group != defined.group):
                raise admission.invalid(resource, str(new["metadata"]["name"]),
                                        [f"spec.names.plural: {defined.plural} is served by another group here"])
            admission.crd_status(new)
        elif not resource.builtin:
            dropped = admission.custom_resource(resource, version, new)
            if version != resource.storage:
                dropped += admission.custom_resource(resource, resource.storage, new)
            warnings = [f'unknown field "{f}"' for f in dropped]
        return warnings

    def _commit(self, resource: Resource, version: str, key: Key, obj: Obj, old: Obj | None, dry_run: bool) -> Obj:
        stored = convert(obj, resource, resource.storage)
        if dry_run:
            return convert(stored, resource, version)
        out = self.store.put(resource.plural, key, stored)
        if resource.plural == "customresourcedefinitions":
            self.store.register(from_crd(out))
        return convert(out, resource, version)


def _spec_of(obj: Obj) -> Obj:
    """Everything but metadata and status: what a change of bumps metadata.generation."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
