"""meshfed's control plane and its tools: one package per room, every import pointing down.

    cli/      the `meshfed` command: reads files, environment and argv; calls agent/ and devkit/
    agent/    the composition root: settings tree, agent lifecycle, data-plane assembly, admin endpoint
    devkit/   the development kit: demo, network lab, sample service, development API server
    registry/ etcd: the adapter, the mirror (read side), the publisher and VIP allocator (write side)
    dns/      the federated DNS server and its pure answering core
    sources/  where exports come from and imports go: kubernetes/ and vm/
    pki/      the mesh CA, certificate issuing and peer verification
    runtime/  the small asyncio and OS toolkit both planes share (value holders, tasks, private files)
    core/     pure records, keys, codec, catalog, view, errors: what every room may import

`gateway/` (the data plane) sits beside `agent/`'s subsystems and imports only core/, runtime/ and pki/.
tests/unit/test_layering.py holds these rules as a test.
"""

__version__ = "0.1.0"
