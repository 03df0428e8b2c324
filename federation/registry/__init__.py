"""The registry: etcd, its one adapter (`etcd.py`, the only importer of aetcd), the mirror that reads
the mesh, the publisher and VIP allocator that write, and the embedded etcd of one-machine setups.

Imports `core`, `runtime`; pure plans (`publishing.py`, `vipalloc.py`) sit beside their shells.
"""
