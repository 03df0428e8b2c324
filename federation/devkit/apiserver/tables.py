"""Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for, as the API server builds it.

Pure. Built-in kinds get the columns kube-apiserver prints for them; custom resources get Name plus
their CRD's additionalPrinterColumns, whose JSONPath (the subset CRDs use: `.a.b`, `[n]`, `[*]`,
`[?(@.k=="v")]`) is evaluated here. Times print as kubectl ages (`5m3s`, `2d`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from federation.devkit.apiserver.resources import Resource

Obj = Mapping[str, Any]
Column = tuple[str, str, str, int, Callable[[Obj, float], Any]]
"""(name, type, format, priority, cell of an object at a time)."""

TABLE_MEDIA = "as=Table"


def wants_table(accept: str) -> bool:
    """True if the Accept header asks for a meta.k8s.io/v1 Table (kubectl get without -o)."""
    return any(TABLE_MEDIA in part and "g=meta.k8s.io" in part and "v=v1;" in part + ";"
               for part in accept.split(","))


def table(resource: Resource, version: str, objects: Sequence[Obj], now: float, resource_version: str,
          include: str = "Metadata") -> dict[str, Any]:
    """The Table of `objects`; `include` is the includeObject query parameter (None, Metadata or Object)."""
    columns = _columns(resource, version)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [cell(obj, now) for *_, cell in columns]}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata") or {}}
        rows.append(row)
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [{"name": n, "type": t, "format": f, "description": n, "priority": p}
                              for n, t, f, p, _ in columns],
        "rows": rows,
    }  # fmt: skip


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Every value `path` selects in `obj` (an empty list when nothing matches)."""
    values = [obj]
    for step in re.findall(r"\.[^.\[]+|\[[^\]]*\]", path.strip().lstrip("{").rstrip("}")):
        nxt: list[Any] = []
        for v in values:
            if step.startswith("."):
                if isinstance(v, Mapping) and step[1:] in v:
                    nxt.append(v[step[1:]])
            elif step == "[*]":
                nxt.extend(v if isinstance(v, list) else list(v.values()) if isinstance(v, Mapping) else [])
            elif step.startswith("[?("):
                m = re.fullmatch(r"\[\?\(@\.([\w.-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]", step)
                if m and isinstance(v, list):
                    nxt.extend(x for x in v if jsonpath(x, "." + m.group(1)) == [m.group(2)])
            elif re.fullmatch(r"\[-?\d+\]", step) and isinstance(v, list):
                i = int(step[1:-1])
                if -len(v) <= i < len(v):
                    nxt.append(v[i])
        values = nxt
    return values


def age(timestamp: Any, now: float) -> str:
    """An RFC 3339 time as kubectl prints an age (`<unknown>` when missing)."""
    try:
        then = dt.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "<unknown>"
    return human_duration(max(0.0, now - then))


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y{d % 365}d" if d % 365 else f"{d // 365}y"


# ---------------------------------------------------------------- columns


def _columns(resource: Resource, version: str) -> list[Column]:
    name: Column = ("Name", "string", "name", 0, lambda o, _: (o.get("metadata") or {}).get("name", ""))
    created: Column = ("Age", "string", "", 0,
                       lambda o, now: age((o.get("metadata") or {}).get("creationTimestamp"), now))
    if not resource.builtin:
        custom = [_custom(c) for c in resource.columns.get(version, ())]
        return [name, *custom] if custom else [name, created]
    return [name, *_BUILTIN.get(resource.plural, ()), created]


def _custom(col: Mapping[str, Any]) -> Column:
    kind, path = str(col.get("type", "string")), str(col.get("jsonPath", ""))

    def cell(obj: Obj, now: float) -> Any:
        found = jsonpath(obj, path)
        if not found:
            return None
        value = found[0]
        if kind == "date":
            return age(value, now)
        if isinstance(value, list | dict):
            return json.dumps(value, separators=(",", ":"))
        return value

    return (str(col.get("name", "")), "string" if kind == "date" else kind, str(col.get("format", "")),
            int(col.get("priority", 0) or 0), cell)


def _spec(o: Obj) -> Mapping[str, Any]:
    return o.get("spec") or {}


def _service_ports(o: Obj) -> str:
    ports = _spec(o).get("ports") or []
    out = [f"{p.get('port')}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
           for p in ports]
    return ",".join(out) or "<none>"


def _external_ip(o: Obj) -> str:
    spec = _spec(o)
    if spec.get("type") == "ExternalName":
        return str(spec.get("externalName", ""))
    ingress = (((o.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
    ips = [i.get("ip") or i.get("hostname") for i in ingress] + list(spec.get("externalIPs") or [])
    if ips:
        return ",".join(str(i) for i in ips)
    return "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"


def _slice_ports(o: Obj) -> str:
    ports = [str(p.get("port")) for p in o.get("ports") or [] if p.get("port") is not None]
    return ",".join(ports) or "<unset>"


def _slice_endpoints(o: Obj) -> str:
    addresses = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    shown = ",".join(addresses[:3])
    return f"{shown} + {len(addresses) - 3} more..." if len(addresses) > 3 else shown or "<unset>"


def _selector(o: Obj) -> str:
    sel = _spec(o).get("selector") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "<none>"


_BUILTIN: dict[str, tuple[Column, ...]] = {
    "services": (
        ("Type", "string", "", 0, lambda o, _: _spec(o).get("type", "ClusterIP")),
        ("Cluster-IP", "string", "", 0, lambda o, _: _spec(o).get("clusterIP") or "<none>"),
        ("External-IP", "string", "", 0, lambda o, _: _external_ip(o)),
        ("Port(s)", "string", "", 0, lambda o, _: _service_ports(o)),
        ("Selector", "string", "", 1, lambda o, _: _selector(o)),
    ),
    "endpointslices": (
        ("AddressType", "string", "", 0, lambda o, _: o.get("addressType", "")),
        ("Ports", "string", "", 0, lambda o, _: _slice_ports(o)),
        ("Endpoints", "string", "", 0, lambda o, _: _slice_endpoints(o)),
    ),
    "namespaces": (("Status", "string", "", 0, lambda o, _: (o.get("status") or {}).get("phase", "Active")),),
}
