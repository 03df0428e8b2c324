"""The HTTP face of the development API server: authentication, discovery, REST verbs, watch streams, Tables.

Requests go to the store through `Operations`; answers are shaped as kube-apiserver shapes them
(Status objects for errors, `<Kind>List` for lists, newline-delimited watch events, `Warning` headers
for pruned fields), so that both the agent's client and a real kubectl work against it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from federation.devkit.apiserver import openapi, protobuf
from federation.devkit.apiserver import resources as res
from federation.devkit.apiserver.admission import Refused
from federation.devkit.apiserver.operations import Operations
from federation.devkit.apiserver.resources import Resource
from federation.devkit.apiserver.selectors import Matcher, SelectorError, field_selector, label_selector
from federation.devkit.apiserver.store import Obj, Watcher, convert, status
from federation.devkit.apiserver.tables import table, wants_table

_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True, slots=True)
class Route:
    """A resource request: what, at which version, where."""

    resource: Resource
    version: str
    namespace: str | None
    name: str | None
    subresource: str


class Handler:
    """aiohttp handler of every path; `calls` records (verb, group, resource) as RBAC would see them."""

    def __init__(self, ops: Operations, tokens: frozenset[str], address: Callable[[], str]) -> None:
        self.ops = ops
        self.store = ops.store
        self.tokens = tokens
        self.address = address
        self.calls: set[tuple[str, str, str]] = set()
        self.users: set[str] = set()
        """Who authenticated so far: `token` or the client certificate's common name."""
        self.unavailable = False
        self.watch_count = 0
        self.list_count = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        user = self._authenticate(request)
        if user is None:
            return _error(401, "Unauthorized", "Unauthorized")
        self.users.add(user)
        if self.unavailable:
            return _error(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        try:
            return await self._dispatch(request)
        except Refused as exc:
            return _error(exc.code, exc.reason, exc.message, exc.causes)

    # ------------------------------------------------------------ authentication

    def _authenticate(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and header[7:] in self.tokens:
            return "token"
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        if cert:  # the TLS layer verified it against the server's CA
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return str(value)
        return None

    # ------------------------------------------------------------ routing

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        resources = list(self.store.resources.values())
        if request.method == "GET":
            if parts in (["healthz"], ["livez"], ["readyz"]):
                return web.Response(text="ok")
            if parts == ["version"]:
                return web.json_response(res.SERVER_VERSION)
            if parts == ["api"]:
                return web.json_response(res.api_versions(self.address()))
            if parts == ["apis"]:
                return web.json_response(res.group_list(resources))
            doc = None
            if parts == ["api", "v1"]:
                doc = res.resource_list(resources, "", "v1")
            elif len(parts) == 2 and parts[0] == "apis":
                doc = res.group(resources, parts[1])
            elif len(parts) == 3 and parts[0] == "apis":
                doc = res.resource_list(resources, parts[1], parts[2])
            elif parts == ["openapi", "v3"]:
                doc = openapi.root(resources)
            elif parts[:2] == ["openapi", "v3"] and len(parts) in (4, 5):
                gv = parts[3:] if parts[2] == "apis" else ["", parts[3]]
                doc = openapi.group_version(resources, gv[0], gv[1])
            if doc is not None:
                return web.json_response(doc)
        route = self._route(parts)
        if route is None:
            return _error(404, "NotFound", "the server could not find the requested resource")
        return await self._resource(request, route)

    def _route(self, parts: list[str]) -> Route | None:
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] != "status":
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None
        resource = self.store.find(group, version, rest[0])
        if resource is None or (ns is not None and not resource.namespaced):
            return None
        return Route(resource, version, ns, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else "")

    # ------------------------------------------------------------ verbs

    async def _resource(self, request: web.Request, route: Route) -> web.StreamResponse:
        r, q = route.resource, request.query
        watching = request.method == "GET" and q.get("watch") in ("1", "true")
        verb = "watch" if watching else _VERBS.get(request.method) or ("get" if route.name else "list")
        if verb == "delete" and not route.name:
            verb = "deletecollection"
        self.calls.add((verb, r.group, r.plural + (f"/{route.subresource}" if route.subresource else "")))
        if route.subresource and (route.subresource != "status" or not r.status):
            return _error(404, "NotFound", "the server could not find the requested resource")
        if r.namespaced and route.namespace is None and verb not in ("list", "watch"):
            return _error(404, "NotFound", "the server could not find the requested resource")
        ns = route.namespace or ""
        key = (ns if r.namespaced else "", route.name or "")
        dry_run = q.get("dryRun") == "All"
        accept = request.headers.get("Accept", "")
        if verb == "watch":
            return await self._watch(request, route)
        if verb in ("list", "deletecollection"):
            items = self._select(request, r, route.namespace)
            if verb == "deletecollection":
                for o in items:
                    self.ops.delete(r, (o["metadata"].get("namespace", ""), o["metadata"]["name"]), dry_run=dry_run)
                return web.json_response({**status(200, "", ""), "status": "Success"})
            self.list_count += 1
            return self._list(r, route.version, items, accept, q.get("includeObject", "Metadata"))
        if verb == "get":
            obj = self.store.get(r.plural, key)
            if obj is None:
                raise Refused(404, "NotFound", f'{r.group_resource} "{key[1]}" not found')
            return self._one(r, route.version, convert(obj, r, route.version), accept)
        if verb == "delete":
            self.ops.delete(r, key, dry_run=dry_run)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                      "details": {"name": key[1], "group": r.group, "kind": r.plural}})
        try:
            if "protobuf" in request.headers.get("Content-Type", ""):
                body = protobuf.decode(await request.read())
            else:
                body = await request.json()
        except protobuf.UnsupportedKind as exc:
            return _error(415, "UnsupportedMediaType", str(exc))
        except protobuf.ProtobufError as exc:
            return _error(400, "BadRequest", f"the protobuf body cannot be read: {exc}")
        except ValueError:
            return _error(400, "BadRequest", "the body of the request is not JSON")
        if verb == "create":
            if route.name:
                return _error(405, "MethodNotAllowed", "the server does not allow this method on this resource")
            obj, warnings = self.ops.create(r, route.version, ns, body, dry_run=dry_run)
            code = 201
        elif verb == "update":
            obj, warnings = self.ops.update(r, route.version, key, body, route.subresource, dry_run=dry_run)
            code = 200
        else:
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            obj, warnings = self.ops.patch(r, route.version, key, body, ctype, route.subresource, dry_run=dry_run)
            code = 200
        if warnings and q.get("fieldValidation") == "Strict":
            return _error(400, "BadRequest", "strict decoding error: " + ", ".join(warnings))
        resp = web.json_response(obj, status=code)
        if q.get("fieldValidation") != "Ignore":
            for w in warnings:
                quoted = w.replace("\\", "\\\\").replace('"', '\\"')  # RFC 7234 5.5 quoted-string
                resp.headers.add("Warning", f'299 - "{quoted}"')
        return resp

    def _select(self, request: web.Request, r: Resource, namespace: str | None) -> list[Obj]:
        try:
            labels = label_selector(request.query["labelSelector"]) if request.query.get("labelSelector") else None
            fields = field_selector(request.query["fieldSelector"]) if request.query.get("fieldSelector") else None
        except SelectorError as exc:
            raise Refused(400, "BadRequest", str(exc)) from None
        return self.store.list(r.plural, namespace, labels, fields)

    def _list(self, r: Resource, version: str, items: list[Obj], accept: str, include: str) -> web.Response:
        out = [convert(o, r, version) for o in items]
        if wants_table(accept):
            return web.json_response(table(r, version, out, time.time(), str(self.store.rv), include))
        if r.builtin:  # the API server leaves kind and apiVersion out of built-in list items
            for item in out:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return web.json_response({"kind": r.list_kind, "apiVersion": r.api_version(version),
                                  "metadata": {"resourceVersion": str(self.store.rv)}, "items": out})

    def _one(self, r: Resource, version: str, obj: Obj, accept: str) -> web.Response:
        if wants_table(accept):
            return web.json_response(table(r, version, [obj], time.time(), obj["metadata"]["resourceVersion"]))
        return web.json_response(obj)

    async def _watch(self, request: web.Request, route: Route) -> web.StreamResponse:
        self.watch_count += 1
        q = request.query
        try:
            labels = label_selector(q["labelSelector"]) if q.get("labelSelector") else None
            fields = field_selector(q["fieldSelector"]) if q.get("fieldSelector") else None
        except SelectorError as exc:
            return _error(400, "BadRequest", str(exc))
        r = route.resource
        if route.name:
            fields = _and(fields, field_selector(f"metadata.name={route.name}"))
        watcher = Watcher(r, route.version, route.namespace, q.get("allowWatchBookmarks") == "true", labels, fields)
        tables = wants_table(request.headers.get("Accept", ""))
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        await resp.prepare(request)
        self.store.watch(watcher, q.get("resourceVersion", ""), q.get("sendInitialEvents") == "true")
        try:
            async with asyncio.timeout(float(q.get("timeoutSeconds", "1800"))):
                while True:
                    item = await watcher.queue.get()
                    if item == "drop":
                        if request.transport is not None:
                            request.transport.abort()
                        return resp
                    assert isinstance(item, dict)
                    if tables and item["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        item = {"type": item["type"], "object": table(r, route.version, [item["object"]], time.time(),
                                                                      str(self.store.rv), q.get("includeObject",
                                                                                                "Metadata"))}
                    await resp.write(json.dumps(item).encode() + b"\n")
                    if item["type"] == "ERROR":
                        break
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            self.store.watchers.discard(watcher)
        await resp.write_eof()
        return resp


def _and(a: Matcher | None, b: Matcher) -> Matcher:
    return b if a is None else (lambda o: a(o) and b(o))


def _error(code: int, reason: str, message: str, causes: list[str] | None = None) -> web.Response:
    details = {"causes": [{"message": c, "field": c.split(":", 1)[0]} for c in causes]} if causes else None
    return web.json_response(status(code, reason, message, details), status=code)
