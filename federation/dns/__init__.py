"""Federated DNS: MCS names for every imported service, answered from registry snapshots.

`zone.py`, `answering.py` and `fastpath.py` are pure; `server.py` and `forwarding.py` are the asyncio
shell. Imports `core`, `runtime` and dnspython; never the registry, a source or the data plane.
"""
