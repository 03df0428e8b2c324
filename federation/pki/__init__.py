"""The mesh PKI: root and site CAs, gateway and etcd certificates, and pure peer verification.

Imports `core`, `runtime` and `cryptography`; the data plane imports it to verify peers.
"""
