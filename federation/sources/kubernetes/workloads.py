"""The workloads of a Kubernetes site: pod IP -> `namespace/serviceAccount`, from the pods the source watches. Pure.

What is kept of a pod (`pod_kept`) is what the endpoint labels and this index need, so a large cluster's
pods cost a few hundred bytes each. An address names a workload only when it is unambiguous: host-network
pods (the node's address, shared by every such pod and the node's own processes) and finished pods (their
IP is free for another pod) name none, and an address two live pods of different service accounts claim
(a reused IP, seen before the old pod's deletion) names none until one of them is gone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from federation.core.workloads import Workloads, is_workload

_DONE = ("Succeeded", "Failed")


def pod_kept(pod: dict[str, Any]) -> dict[str, Any]:
    """What the agent keeps of a pod: key, version, labels (conversion.ENDPOINT_LABELS_ANNOTATION), and for a
    live pod on the pod network its service account and IPs (the workload behind its address)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    kept: dict[str, Any] = {"metadata": {k: meta[k] for k in ("namespace", "name", "resourceVersion", "labels")
                                         if k in meta}}
    if spec.get("hostNetwork") is True or status.get("phase") in _DONE:
        return kept
    ips = [i.get("ip") for i in status.get("podIPs") or () if isinstance(i, dict)] or [status.get("podIP")]
    ips = [ip for ip in ips if isinstance(ip, str) and ip]
    if ips:
        kept["spec"] = {"serviceAccountName": spec.get("serviceAccountName") or "default"}
        kept["status"] = {"podIPs": [{"ip": ip} for ip in ips]}
    return kept


def workloads_of(pods: Iterable[dict[str, Any]]) -> Workloads:
    """The workload behind each pod IP (pods as `pod_kept` keeps them); ambiguous and invalid ones left out."""
    claims: dict[str, set[str]] = {}
    for pod in pods:
        namespace = (pod.get("metadata") or {}).get("namespace")
        account = (pod.get("spec") or {}).get("serviceAccountName")
        workload = f"{namespace}/{account}"
        if not isinstance(namespace, str) or not isinstance(account, str) or not is_workload(workload):
            continue
        for item in (pod.get("status") or {}).get("podIPs") or ():
            try:
                ip = str(ipaddress.ip_address(item.get("ip", "")))
            except (ValueError, AttributeError):
                continue
            claims.setdefault(ip, set()).add(workload)
    return Workloads({ip: next(iter(w)) for ip, w in claims.items() if len(w) == 1})
