"""A stand-in Kubernetes API server for tests: real list/watch protocol on 127.0.0.1, objects as the API shapes them.

Speaks what the agent needs for Services, EndpointSlices (discovery.k8s.io/v1), ServiceExports and
ServiceImports (multicluster.x-k8s.io/v1alpha1): list with resourceVersion, `?watch=1` streams of
ADDED/MODIFIED/DELETED/BOOKMARK events (history replay from a resourceVersion, 410 Expired once it
is compacted), create/update/merge-patch/delete, the ServiceExport status subresource and bearer
token auth. Test hooks: `put`/`remove` (a controller or kubectl acting), `expire` (compaction: open
watches get a 410 ERROR event), `drop_watches` (connections cut), `bookmark`, `unavailable`. Every
request is recorded as an RBAC (verb, group, resource) triple in `calls`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

TOKEN = "meshfed-test-token"  # noqa: S105 - the stand-in's fixed bearer token, not a secret


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    status_subresource: bool = False
    builtin: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = {k.plural: k for k in (
    Kind("", "v1", "services", "Service"),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    Kind("multicluster.x-k8s.io", "v1alpha1", "serviceexports", "ServiceExport", True, builtin=False),
    Kind("multicluster.x-k8s.io", "v1alpha1", "serviceimports", "ServiceImport", True, builtin=False),
)}


@dataclass(eq=False)
class _Watcher:
    plural: str
    namespace: str | None
    bookmarks: bool
    queue: asyncio.Queue[dict[str, Any] | str] = field(default_factory=asyncio.Queue)


class FakeApiServer:
    """The stand-in API server; `async with FakeApiServer() as api:` then `api.kubeconfig(path)`."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {p: {} for p in KINDS}
        self.rv = 100
        self.floor = 0
        """Oldest resourceVersion a watch may resume from (history before it is compacted)."""
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.watchers: set[_Watcher] = set()
        self.calls: set[tuple[str, str, str]] = set()
        self.unavailable = False
        self.watch_count = 0
        self.list_count = 0
        self._next_ip = 10
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> FakeApiServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop_watches()
        assert self._runner is not None
        await self._runner.cleanup()

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig pointing at this server, with a bearer token, and return its path."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "test", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
        return path

    # ------------------------------------------------------------ test hooks

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object as another client would (status included)."""
        plural = _plural_of(obj)
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        old = self.objects[plural].get(key)
        new = copy.deepcopy(obj)
        if old is None:
            self._fill_new(plural, new)
        else:
            new["metadata"] = {**old["metadata"], **new["metadata"]}
        return self._store(plural, key, new, "ADDED" if old is None else "MODIFIED")

    def remove(self, plural: str, namespace: str, name: str) -> None:
        obj = self.objects[plural].pop((namespace, name))
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(plural, "DELETED", obj)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects[plural].get((namespace, name))

    def expire(self) -> None:
        """Compact history: every open watch gets a 410 Expired ERROR event, as after etcd compaction."""
        self.floor = self.rv
        self.history.clear()
        for w in list(self.watchers):
            w.queue.put_nowait(_status(410, "Expired", f"too old resource version: ({self.rv})"))

    def drop_watches(self) -> None:
        """Cut every watch connection without a clean end."""
        for w in list(self.watchers):
            w.queue.put_nowait("drop")

    def bookmark(self) -> None:
        for w in list(self.watchers):
            if w.bookmarks:
                k = KINDS[w.plural]
                w.queue.put_nowait({"type": "BOOKMARK", "object": {
                    "kind": k.kind, "apiVersion": k.api_version, "metadata": {"resourceVersion": str(self.rv)}}})

    # ------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _error(401, "Unauthorized", "Unauthorized")
        if self.unavailable:
            return _error(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        route = _route(request.path)
        if route is None:
            return _error(404, "NotFound", f"the server could not find the requested resource {request.path}")
        kind, ns, name, sub = route
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(request.method, "")
        if verb == "list" and request.query.get("watch") in ("1", "true"):
            verb = "watch"
        self.calls.add((verb, kind.group, kind.plural + (f"/{sub}" if sub else "")))
        if sub and (sub != "status" or not kind.status_subresource):
            return _error(404, "NotFound", f"no subresource {sub}")
        if verb == "watch":
            return await self._watch(request, kind, ns)
        if verb == "list":
            return self._list(kind, ns)
        if verb == "create" and ns and not name and not sub:
            return await self._create(request, kind, ns)
        if not (ns and name):
            return _error(405, "MethodNotAllowed", "method not allowed")
        key = (ns, name)
        old = self.objects[kind.plural].get(key)
        if old is None:
            return _error(404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{name}" not found')
        if verb == "get":
            return web.json_response(old)
        if verb == "delete":
            self.remove(kind.plural, ns, name)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                      "details": {"name": name, "kind": kind.plural}})
        body = await request.json()
        if verb == "update":
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                return _error(409, "Conflict", "the object has been modified; please apply your changes to the "
                                               "latest version and try again")
            new = copy.deepcopy(body)
            new["metadata"] = {**old["metadata"], **{k: v for k, v in new.get("metadata", {}).items()
                                                     if k in ("labels", "annotations")}}
        else:
            ctype = request.headers.get("Content-Type", "")
            if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                return _error(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")
            new = _merge(copy.deepcopy(old), body)
        new["metadata"]["name"], new["metadata"]["namespace"] = name, ns
        if kind.status_subresource:
            if sub == "status":  # only .status changes through the subresource
                new = {**copy.deepcopy(old), "status": new.get("status")}
            else:
                new["status"] = copy.deepcopy(old.get("status"))
                if new.get("spec") != old.get("spec"):
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if kind.plural == "services":
            for f in ("clusterIP", "clusterIPs"):
                if f in old.get("spec", {}):
                    if new.get("spec", {}).get(f, old["spec"][f]) != old["spec"][f]:
                        return _error(422, "Invalid", f"spec.{f}: Invalid value: field is immutable")
                    new.setdefault("spec", {})[f] = old["spec"][f]
        if new == old:
            return web.json_response(old)
        return web.json_response(self._store(kind.plural, key, new, "MODIFIED"))

    async def _create(self, request: web.Request, kind: Kind, ns: str) -> web.StreamResponse:
        obj = await request.json()
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", ns)
        key = (ns, meta.get("name", ""))
        if key in self.objects[kind.plural]:
            return _error(409, "AlreadyExists", f'{kind.plural} "{key[1]}" already exists')
        obj.pop("status", None)
        self._fill_new(kind.plural, obj)
        return web.json_response(self._store(kind.plural, key, obj, "ADDED"), status=201)

    def _list(self, kind: Kind, ns: str | None) -> web.StreamResponse:
        self.list_count += 1
        items = [copy.deepcopy(o) for (n, _), o in sorted(self.objects[kind.plural].items()) if ns in (None, n)]
        if kind.builtin:  # the API server leaves kind and apiVersion out of built-in list items
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return web.json_response({"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                                  "metadata": {"resourceVersion": str(self.rv)}, "items": items})

    async def _watch(self, request: web.Request, kind: Kind, ns: str | None) -> web.StreamResponse:
        self.watch_count += 1
        q = request.query
        watcher = _Watcher(kind.plural, ns, q.get("allowWatchBookmarks") == "true")
        since = q.get("resourceVersion", "")
        if since in ("", "0"):
            for (n, _), o in sorted(self.objects[kind.plural].items()):
                if ns in (None, n):
                    watcher.queue.put_nowait({"type": "ADDED", "object": copy.deepcopy(o)})
        elif int(since) < self.floor:
            watcher.queue.put_nowait(_status(410, "Expired", f"too old resource version: {since} ({self.rv})"))
        else:
            for rv, plural, etype, o in self.history:
                if rv > int(since) and plural == kind.plural and ns in (None, o["metadata"]["namespace"]):
                    watcher.queue.put_nowait({"type": etype, "object": copy.deepcopy(o)})
        timeout = float(q.get("timeoutSeconds", "1800"))
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        await resp.prepare(request)
        self.watchers.add(watcher)
        try:
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        item = await watcher.queue.get()
                except TimeoutError:
                    break
                if item == "drop":
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                await resp.write(json.dumps(item).encode() + b"\n")
                if isinstance(item, dict) and item["type"] == "ERROR":
                    break
        finally:
            self.watchers.discard(watcher)
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------ state

    def _fill_new(self, plural: str, obj: dict[str, Any]) -> None:
        kind = KINDS[plural]
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2024-05-01T10:00:00Z")
        meta.setdefault("generation", 1)
        if plural == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if spec.get("clusterIP") != "None" and spec["type"] != "ExternalName":
                self._next_ip += 1
                spec["clusterIP"] = f"10.96.{self._next_ip // 250}.{self._next_ip % 250}"
            if "clusterIP" in spec:
                spec["clusterIPs"] = [spec["clusterIP"]]
            for p in spec.get("ports", []):
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))

    def _store(self, plural: str, key: tuple[str, str], obj: dict[str, Any], etype: str) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[plural][key] = obj
        self._emit(plural, etype, obj)
        return copy.deepcopy(obj)

    def _emit(self, plural: str, etype: str, obj: dict[str, Any]) -> None:
        snapshot = copy.deepcopy(obj)
        self.history.append((self.rv, plural, etype, snapshot))
        for w in list(self.watchers):
            if w.plural == plural and w.namespace in (None, obj["metadata"]["namespace"]):
                w.queue.put_nowait({"type": etype, "object": copy.deepcopy(snapshot)})


def _plural_of(obj: dict[str, Any]) -> str:
    return next(p for p, k in KINDS.items() if k.kind == obj["kind"])


def _route(path: str) -> tuple[Kind, str | None, str | None, str | None] | None:
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    ns = None
    if len(rest) >= 2 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    if not rest or rest[0] not in KINDS or KINDS[rest[0]].group != group:
        return None
    return KINDS[rest[0]], ns, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = _merge(target.get(k), v)
    return target


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                        "message": message, "reason": reason, "code": code}}


def _error(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(_status(code, reason, message)["object"], status=code)


# ---------------------------------------------------------------- as a process (the demo's "cluster")


async def serve(kubeconfig: Path, objects: list[dict[str, Any]]) -> None:
    """Run a stand-in holding `objects` until SIGTERM, with a kubeconfig for it at `kubeconfig`."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FakeApiServer() as api:
        for obj in objects:
            api.put(obj)
        tmp = kubeconfig.with_suffix(".tmp")
        api.kubeconfig(tmp)
        tmp.replace(kubeconfig)  # appears whole: the demo waits for it
        print(f"stand-in API server on 127.0.0.1:{api.port}", flush=True)
        await stop.wait()


def set_ready(kubeconfig: Path, namespace: str, slice_name: str, ready: bool) -> None:
    """Flip every endpoint of an EndpointSlice to `ready`, through the API (as the slice controller would)."""
    import urllib.request

    cfg = json.loads(kubeconfig.read_text())
    server, token = cfg["clusters"][0]["cluster"]["server"], cfg["users"][0]["user"]["token"]
    url = f"{server}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{slice_name}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:  # noqa: S310
        obj = json.load(resp)
    for ep in obj.get("endpoints", []):
        ep.setdefault("conditions", {})["ready"] = ready
    req = urllib.request.Request(url, data=json.dumps(obj).encode(), headers=headers, method="PUT")  # noqa: S310
    with urllib.request.urlopen(req, timeout=5):  # noqa: S310 - our own stand-in
        pass


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m federation.devkit.apiserver",
                                     description="A stand-in Kubernetes API server (demo and tests).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--kubeconfig", type=Path, required=True)
    s.add_argument("--objects", type=Path, required=True, help="JSON list of objects to start with")
    r = sub.add_parser("set-ready")
    r.add_argument("--kubeconfig", type=Path, required=True)
    r.add_argument("--namespace", required=True)
    r.add_argument("--slice", required=True)
    r.add_argument("--ready", choices=("true", "false"), required=True)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        asyncio.run(serve(args.kubeconfig, json.loads(args.objects.read_text())))
    else:
        set_ready(args.kubeconfig, args.namespace, args.slice, args.ready == "true")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
