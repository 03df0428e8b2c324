"""A thin adapter over kubernetes_asyncio's ApiClient that speaks plain dicts, for the four resources the agent uses.

It keeps kubernetes_asyncio's config loading (kubeconfig or in-cluster), auth and aiohttp transport, and
does its own JSON so objects stay shaped exactly as the API sends them. Third-party errors are wrapped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from federation.core.errors import ConfigError, MeshfedError
from federation.sources.kubernetes.settings import KubernetesSettings


class ApiUnavailable(MeshfedError):
    """The API server could not be reached or did not answer in time; retryable."""


class ApiError(MeshfedError):
    """The API server answered with an error Status."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason


class Expired(ApiError):
    """410 Gone: the resourceVersion is compacted away; relist."""


@dataclass(frozen=True, slots=True)
class Resource:
    """Where a resource lives in the API."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        return base + (f"/{subresource}" if subresource else "")


RESOURCES = {
    "services": Resource("", "v1", "services"),
    "endpointslices": Resource("discovery.k8s.io", "v1", "endpointslices"),
    "serviceexports": Resource("multicluster.x-k8s.io", "v1alpha1", "serviceexports"),
    "serviceimports": Resource("multicluster.x-k8s.io", "v1alpha1", "serviceimports"),
    "pods": Resource("", "v1", "pods"),
    "trafficpolicies": Resource("meshfed.io", "v1alpha1", "trafficpolicies"),
    "accesspolicies": Resource("meshfed.io", "v1alpha1", "accesspolicies"),
    "meshaccesspolicies": Resource("meshfed.io", "v1alpha1", "meshaccesspolicies"),  # cluster-scoped
}

_CHUNK_LIMIT = 16 * 1024 * 1024
"""A watch line longer than this is not an object the agent can use; the stream is dropped."""


class KubeClient:
    """List, watch, create, merge-patch and delete objects as dicts."""

    def __init__(self, api: Any, timeout: float) -> None:
        self._api = api
        self._timeout = timeout

    @classmethod
    async def connect(cls, settings: KubernetesSettings) -> KubeClient:
        """Load the kubeconfig (or the in-cluster service account) and make a client; ConfigError if neither loads."""
        from kubernetes_asyncio import client, config

        cfg = client.Configuration()
        try:
            if settings.kubeconfig:
                await config.load_kube_config(
                    config_file=settings.kubeconfig, context=settings.context or None, client_configuration=cfg
                )
            else:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError, ValueError) as exc:
            where = settings.kubeconfig or "in-cluster service account"
            raise ConfigError(f"kubernetes.kubeconfig: cannot load {where}: {exc}") from exc
        return cls(client.ApiClient(configuration=cfg), settings.request_timeout)

    async def close(self) -> None:
        await self._api.close()

    async def list_all(self, resource: str) -> tuple[list[dict[str, Any]], str]:
        """Every object of `resource` in all namespaces, and the list's resourceVersion."""
        body = await self._call("GET", RESOURCES[resource].path())
        return list(body.get("items") or []), str((body.get("metadata") or {}).get("resourceVersion", ""))

    async def watch(self, resource: str, since: str, server_timeout: int) -> AsyncIterator[dict[str, Any]]:
        """Watch events after resourceVersion `since`; ends when the server ends the stream.

        ERROR events are raised (410 as Expired); BOOKMARK events are passed on.
        """
        query = [("watch", "1"), ("resourceVersion", since), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(server_timeout))]  # fmt: skip
        read_timeout = aiohttp.ClientTimeout(sock_connect=self._timeout, sock_read=server_timeout + self._timeout)
        resp = await self._request("GET", RESOURCES[resource].path(), query, None, read_timeout)
        try:
            await _check(resp)
            buf = b""
            try:
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    if len(buf) > _CHUNK_LIMIT:
                        raise ApiUnavailable("watch event larger than 16 MiB")
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield _event(line)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiUnavailable(f"watch of {resource} broke: {exc!r}") from exc
        finally:
            resp.release()

    async def create(self, resource: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        ns = obj["metadata"]["namespace"]
        return await self._call("POST", RESOURCES[resource].path(ns), body=obj)

    async def patch(
        self, resource: str, namespace: str, name: str, body: Mapping[str, Any], subresource: str = ""
    ) -> dict[str, Any]:
        """JSON merge patch (RFC 7386) of one object or its subresource."""
        path = RESOURCES[resource].path(namespace or None, name, subresource)  # "": a cluster-scoped object
        return await self._call("PATCH", path, body=body, content_type="application/merge-patch+json")

    async def delete(self, resource: str, namespace: str, name: str) -> None:
        await self._call("DELETE", RESOURCES[resource].path(namespace, name))

    async def _call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        resp = await self._request(method, path, [], body, timeout, content_type)
        try:
            await _check(resp)
            try:
                data = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiUnavailable(f"{method} {path}: {exc!r}") from exc
        finally:
            resp.release()
        try:
            out = json.loads(data)
        except ValueError as exc:
            raise ApiError(resp.status, "BadResponse", f"{method} {path}: answer is not JSON") from exc
        if not isinstance(out, dict):
            raise ApiError(resp.status, "BadResponse", f"{method} {path}: answer is not an object")
        return out

    async def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: Any,
        client_timeout: aiohttp.ClientTimeout,
        content_type: str = "application/json",
    ) -> aiohttp.ClientResponse:
        try:
            resp: aiohttp.ClientResponse = await self._api.call_api(
                path, method, query_params=query, body=body,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                auth_settings=["BearerToken"], _preload_content=False, _request_timeout=client_timeout,
            )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiUnavailable(f"{method} {path}: {exc!r}") from exc
        return resp


async def _check(resp: aiohttp.ClientResponse) -> None:
    if 200 <= resp.status < 300:
        return
    try:
        status = json.loads(await resp.read())
        reason, message = str(status.get("reason", "")), str(status.get("message", ""))
    except (ValueError, AttributeError, aiohttp.ClientError, TimeoutError):
        reason, message = resp.reason or "", ""
    if resp.status == 410:
        raise Expired(410, reason or "Expired", message)
    if resp.status in (429, 500, 502, 503, 504):
        raise ApiUnavailable(f"{resp.status} {reason}: {message}")
    raise ApiError(resp.status, reason, message)


def _event(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise ApiUnavailable(f"watch stream sent a line that is not JSON: {exc}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise ApiUnavailable("watch stream sent an event without an object")
    if event.get("type") == "ERROR":
        obj = event["object"]
        code = int(obj.get("code") or 500)
        cls = Expired if code == 410 else ApiError
        raise cls(code, str(obj.get("reason", "")), str(obj.get("message", "")))
    return event
