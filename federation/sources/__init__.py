"""Where a site's exports come from and where its imports go: `kubernetes/` and `vm/`.

Each has pure cores (`convert`, `plan`) beside thin shells, and one adapter module per third-party
client. Sources import `core`, `runtime` and their own clients; never the registry, DNS or gateway.
"""
