"""The Kubernetes source: exports from ServiceExports and EndpointSlices, imports as ServiceImports and
derived Services. `conversion.py` and `importing.py` are pure; `client.py` is the one adapter of
kubernetes_asyncio; `watching.py` and `source.py` are the shells.
"""
