"""The development Kubernetes API server: enough of kube-apiserver for the agent, the demo and a real kubectl.

Not a product component: nothing in the agent imports it. `DevApiServer` is the in-process server
(tests); `python -m federation.devkit.apiserver serve` runs one as a process (the demo's cluster).
Modules: resources (what is served, discovery), store (objects, resourceVersions, watches),
operations (the write verbs), admission (defaults, Service IPs, CRD schemas), schema (structural
pruning and validation), patching (merge, JSON and strategic merge patch), selectors, tables
(server-side printing), http (authentication and REST), server (TLS, kubeconfig, test hooks).
"""

from federation.devkit.apiserver.server import TOKEN, DevApiServer, load_crds

__all__ = ["TOKEN", "DevApiServer", "load_crds"]
