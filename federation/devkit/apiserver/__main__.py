"""`python -m federation.devkit.apiserver`: run a development API server as a process, or poke one.

`serve` holds the given objects until SIGTERM and writes a kubeconfig for it (token and TLS) once it
listens; `set-ready` flips an EndpointSlice's endpoints as the EndpointSlice controller would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from federation.devkit.apiserver.server import DEFAULT_SERVICE_CIDRS, DevApiServer, load_crds, random_token
from federation.devkit.serviceproxy import ServiceProxy


async def serve(kubeconfig: Path, objects: list[dict[str, Any]], *, host: str = "127.0.0.1", port: int = 0,
                crds: Path | None = None, service_cidrs: tuple[str, ...] = DEFAULT_SERVICE_CIDRS,
                name: str = "dev", proxy: bool = False) -> None:
    """Run a server holding `objects` until SIGTERM, with a kubeconfig for it at `kubeconfig`.

    With `proxy`, a kube-proxy stand-in makes loopback ClusterIPs reach their Services' endpoints.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with DevApiServer(crds=load_crds(crds) if crds else None, host=host, port=port, name=name,
                            service_cidrs=service_cidrs, token=random_token()) as api:
        for obj in objects:  # objects of the file are created as the server starts
            (obj.get("metadata") or {}).pop("creationTimestamp", None)
            api.put(obj)
        tmp = kubeconfig.with_name(f".{kubeconfig.name}.tmp")
        api.kubeconfig(tmp)
        tmp.replace(kubeconfig)  # appears whole: the demo waits for it
        print(f"development API server on {api.url}; kubeconfig {kubeconfig}", flush=True)
        proxying = asyncio.create_task(ServiceProxy(api.store).run(), name="service-proxy") if proxy else None
        try:
            await stop.wait()
        finally:
            if proxying is not None:
                proxying.cancel()
                await asyncio.gather(proxying, return_exceptions=True)


def set_ready(kubeconfig: Path, namespace: str, slice_name: str, ready: bool) -> None:
    """Flip every endpoint of an EndpointSlice to `ready`, through the API (as the slice controller would)."""
    import base64

    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()) \
        if "certificate-authority-data" in cluster else None
    url = f"{cluster['server']}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{slice_name}"
    headers = {"Authorization": f"Bearer {user['token']}", "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5, context=ctx) as resp:  # noqa: S310
        obj = json.load(resp)
    for ep in obj.get("endpoints", []):
        ep.setdefault("conditions", {})["ready"] = ready
    req = urllib.request.Request(url, data=json.dumps(obj).encode(), headers=headers, method="PUT")  # noqa: S310
    with urllib.request.urlopen(req, timeout=5, context=ctx):  # noqa: S310 - our own development server
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federation.devkit.apiserver",
                                     description="The development Kubernetes API server (demo and tests).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run a server until SIGTERM")
    s.add_argument("--kubeconfig", type=Path, required=True, help="where to write the kubeconfig for it")
    s.add_argument("--objects", type=Path, help="JSON list of objects to start with")
    s.add_argument("--crds", type=Path, help="CRDs to serve (default: every CRD file in deploy/kubernetes/)")
    s.add_argument("--listen", default="127.0.0.1:0", help="address:port (port 0: any free port)")
    s.add_argument("--service-cidr", action="append", help="ClusterIP range, one per family (default 10.96.0.0/16)")
    s.add_argument("--name", default="dev", help="the cluster's name in the kubeconfig")
    s.add_argument("--proxy", action="store_true",
                   help="proxy loopback ClusterIPs to their endpoints (use with a --service-cidr in 127.0.0.0/8)")
    r = sub.add_parser("set-ready", help="mark every endpoint of an EndpointSlice ready or not")
    r.add_argument("--kubeconfig", type=Path, required=True)
    r.add_argument("--namespace", required=True)
    r.add_argument("--slice", required=True)
    r.add_argument("--ready", choices=("true", "false"), required=True)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        host, _, port = args.listen.rpartition(":")
        objects = json.loads(args.objects.read_text()) if args.objects else []
        asyncio.run(serve(args.kubeconfig, objects, host=host.strip("[]"), port=int(port), crds=args.crds,
                          service_cidrs=tuple(args.service_cidr or DEFAULT_SERVICE_CIDRS), name=args.name,
                          proxy=args.proxy))
    else:
        set_ready(args.kubeconfig, args.namespace, args.slice, args.ready == "true")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
