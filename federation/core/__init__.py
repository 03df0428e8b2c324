"""The pure kernel: registry records, keys, codec, the catalog and its views, errors, small utilities.

No IO of any kind (no asyncio, sockets, files, subprocesses, clocks read here) and no third-party
package: every other room, both planes included, may import it, and it imports nothing of meshfed
outside itself.
"""
