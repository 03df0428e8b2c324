"""The VM source: declared services with health checks, LAN discovery and announcing, the VIP interface.

Pure cores: `checking.py`, `lan.py`, `addressing.py`, `installing.py`. Adapters: `netlink.py` (the only
pyroute2 importer), `mdns.py` (the only zeroconf importer). `source.py` puts the parts together.
"""
