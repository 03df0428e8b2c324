"""Loader of the scale benchmark: N simulated sites written into etcd in bulk, then endpoint changes on command.

Run by tests/bench/scale.py as a child process (`python -m tests.bench.scaleload --endpoint HOST:PORT
--sites N --root CA_DIR --pki DIR`). Each site gets its own lease (kept alive by this process for the
run: one LeaseKeepAlive stream refreshes every lease each ttl/4), a site record and 100 export records,
encoded with the real codec and validated by the real decoder before they are written. The bulk write
uses transactions of up to --txn-ops operations and --txn-bytes bytes, a few in flight at once.

Protocol on stdin/stdout, one line each (times are time.monotonic(), shared by processes on one host):

    -> PKI <seconds>                             site CAs and gateway leaves are under --pki
    <- load <gateway-host> <gateway-port> | load none
    -> LOADED <json>                             seconds, keys, bytes, transactions, leases
    <- spaced <count> <interval-seconds>  |  rate <changes-per-second> <seconds>
    -> C <id> <site> <ns> <name> <address> <submitted> <committed>   one line per committed change
    -> DONE <json>                               changes, errors, seconds
    <- quit (or end of input)

A change gives one ready endpoint of a random site's headless export a new, unique address (a pod that
restarted elsewhere) and writes that one export record, in its own transaction, bound to the site's lease.
Endpoints are drawn without replacement, so a change is never overwritten before it could be seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aetcd
import aetcd.rpc

from federation.core.codec import decode_export, decode_site, encode_export, encode_site
from federation.core.keys import Keys, ServiceKey, SiteKey
from federation.core.records import Gateway, ServiceExport, ServiceType
from federation.pki.issuing import cert_pem, issue_gateway, load_authority, new_site_ca
from federation.runtime.files import write_private
from tests.bench import scalemesh as mesh
from tests.pkihelp import now

KEYS = Keys()
GATEWAY_NAME = "eastwest"
CHANNEL = {"grpc.max_send_message_length": 64 * 2**20, "grpc.max_receive_message_length": 64 * 2**20}


class Loader:
    """The simulated sites: their records in memory, their leases in etcd."""

    def __init__(self, client: aetcd.Client, shape: mesh.Shape, ca_chains: list[str], ttl: int) -> None:
        self.client = client
        self.shape = shape
        self.ca_chains = ca_chains
        self.ttl = ttl
        self.leases: list[int] = []
        self.exports: dict[int, list[ServiceExport]] = {}
        self.headless: dict[int, list[int]] = {}
        self.encoded: dict[int, list[tuple[str, bytes]]] = {}
        self.slots: list[tuple[int, int, int]] = []
        self.locks: dict[int, asyncio.Lock] = {}
        self.changes = 0
        self.errors = 0

    def encode(self, sample: int = 25) -> float:
        """Build and encode every site's exports with the real codec; one record in `sample` (and the first
        of each site) is decoded again, as the agent will, so a record the agent would refuse fails here."""
        started = time.monotonic()
        for i in range(self.shape.sites):
            records = [mesh.export(self.shape, i, pos, k) for pos, k in enumerate(mesh.site_services(self.shape, i))]
            self.exports[i] = records
            self.headless[i] = [pos for pos, e in enumerate(records) if e.type is ServiceType.HEADLESS]
            values = []
            for n, e in enumerate(records):
                value = encode_export(e)
                if n % sample == 0:
                    decode_export(ServiceKey(e.site, e.namespace, e.name), value)
                values.append((KEYS.service(e.site, e.namespace, e.name), value))
            self.encoded[i] = values
        return time.monotonic() - started

    async def load(self, gateway: Gateway | None, txn_ops: int, txn_bytes: int, in_flight: int) -> dict[str, Any]:
        """Grant the leases and bulk-write every site (records encoded beforehand); what it took."""
        started = time.monotonic()
        gate = asyncio.Semaphore(64)

        async def grant() -> int:
            async with gate:
                return int((await self.client.lease(self.ttl)).id)

        self.leases = list(await asyncio.gather(*(grant() for _ in range(self.shape.sites))))
        granted = time.monotonic()
        ops: list[tuple[str, bytes, int]] = []
        for i in range(self.shape.sites):
            site = mesh.site_record(self.shape, i, gateway, self.ca_chains[i])
            value = encode_site(site)
            decode_site(SiteKey(site.name), value)
            ops.append((KEYS.site(site.name), value, self.leases[i]))
            ops.extend((key, value, self.leases[i]) for key, value in self.encoded[i])
        batches: list[list[tuple[str, bytes, int]]] = [[]]
        size = 0
        for op in ops:
            if batches[-1] and (len(batches[-1]) >= txn_ops or size + len(op[1]) > txn_bytes):
                batches.append([])
                size = 0
            batches[-1].append(op)
            size += len(op[0]) + len(op[1]) + 16
        slots = asyncio.Semaphore(in_flight)

        async def commit(batch: list[tuple[str, bytes, int]]) -> None:
            t = self.client.transactions
            async with slots:
                await self.client.transaction(
                    compare=[], success=[t.put(k.encode(), v, lease=lease) for k, v, lease in batch], failure=[])

        written = time.monotonic()
        await asyncio.gather(*(commit(b) for b in batches))
        done = time.monotonic()
        return {"seconds": round(done - started, 3), "lease_seconds": round(granted - started, 3),
                "write_seconds": round(done - written, 3), "keys": len(ops), "bytes": sum(len(v) for _, v, _ in ops),
                "transactions": len(batches), "leases": len(self.leases)}

    async def keepalive(self) -> None:
        """Refresh every lease each ttl/4 seconds on one stream per round, until cancelled."""
        stub = self.client.leasestub
        while True:
            await asyncio.sleep(self.ttl / 4)
            requests = [aetcd.rpc.LeaseKeepAliveRequest(ID=lease) for lease in self.leases]
            try:
                async with asyncio.timeout(self.ttl / 2):
                    seen = 0
                    async for _ in stub.LeaseKeepAlive(requests):
                        seen += 1
                        if seen == len(requests):
                            break
            except Exception as exc:  # a benchmark reports and goes on
                print(f"# keepalive round failed: {exc!r}", file=sys.stderr, flush=True)

    async def change(self, rng: random.Random) -> None:
        """One endpoint change: a new address for a ready endpoint of a random site's headless export.

        Only sites on the observer's network are drawn: it answers their headless endpoints at the pods' own
        addresses, while an endpoint of another network keeps the address the observer gave it (issue 15),
        which a new pod address does not change (its egress route does). Endpoints are drawn without replacement (until all were changed once), so no change is overwritten
        by a later one before an observer could show it.
        """
        if not self.slots:
            self.slots = [(i, pos, e) for i, positions in self.headless.items() for pos in positions
                          for e in range(self.shape.endpoints) if mesh.same_network_as_observer(self.shape, i)]
            rng.shuffle(self.slots)
        i, pos, e = self.slots.pop()
        async with self.locks.setdefault(i, asyncio.Lock()):  # one site writes its records in order
            old = self.exports[i][pos]
            cid = self.changes
            self.changes += 1
            addr = mesh.change_address(cid)
            endpoints = list(old.endpoints)
            endpoints[e] = replace(endpoints[e], addresses=(addr,), ready=True)
            new = replace(old, endpoints=tuple(endpoints))
            self.exports[i][pos] = new
            key = KEYS.service(new.site, new.namespace, new.name).encode()
            t = self.client.transactions
            value = encode_export(new)
            submitted = time.monotonic()
            try:
                await self.client.transaction(compare=[], success=[t.put(key, value, lease=self.leases[i])],
                                              failure=[])
            except Exception as exc:
                self.errors += 1
                print(f"# change {cid} failed: {exc!r}", file=sys.stderr, flush=True)
                return
            committed = time.monotonic()
        print(f"C {cid} {new.site} {new.namespace} {new.name} {new.endpoints[e].hostname} {addr} {submitted:.6f} {committed:.6f}",
              flush=True)

    async def spaced(self, count: int, interval: float, rng: random.Random) -> None:
        """`count` changes, one after the other, `interval` seconds apart."""
        for _ in range(count):
            await self.change(rng)
            await asyncio.sleep(interval)

    async def rate(self, per_second: float, seconds: float, rng: random.Random) -> None:
        """Changes started at `per_second` on a fixed schedule for `seconds` (each its own transaction)."""
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        total = int(per_second * seconds)
        for n in range(total):
            delay = start + n / per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.change(rng))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if len(tasks) > 1000:  # etcd fell far behind: do not pile up more
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks:
            await asyncio.wait(tasks, timeout=30)


def make_pki(shape: mesh.Shape, root_dir: Path, out: Path) -> list[str]:
    """A site CA and a gateway leaf per simulated site (from the mesh root); the CA chains for the records."""
    root = load_authority(root_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    chains = []
    for i in range(shape.sites):
        ca = new_site_ca(root, mesh.site_name(i), now())
        leaf = issue_gateway(ca, GATEWAY_NAME, now())
        write_private(out / f"{mesh.site_name(i)}.pem", leaf.chain_pem() + leaf.key_pem())
        chains.append(cert_pem(ca.cert).decode())
    return chains


async def main(args: argparse.Namespace) -> None:
    shape = mesh.Shape(args.sites, seed=args.seed)
    started = time.monotonic()
    chains = make_pki(shape, args.root, args.pki)
    print(f"PKI {time.monotonic() - started:.2f}", flush=True)
    host, _, port = args.endpoint.rpartition(":")
    loop = asyncio.get_running_loop()

    async def line() -> str:
        return (await loop.run_in_executor(None, sys.stdin.readline)).strip()

    rng = random.Random(args.seed)
    async with aetcd.Client(host=host, port=int(port), timeout=60, options=CHANNEL) as client:
        loader = Loader(client, shape, chains, args.lease_ttl)
        encoding = loader.encode()
        keepalive: asyncio.Task[None] | None = None
        try:
            while (command := (await line()).split()) and command[0] != "quit":
                if command[0] == "load":
                    gateway = None if command[1] == "none" else Gateway(GATEWAY_NAME, command[1], int(command[2]))
                    report = await loader.load(gateway, args.txn_ops, args.txn_bytes, args.in_flight)
                    report["encode_seconds"] = round(encoding, 3)
                    keepalive = asyncio.create_task(loader.keepalive(), name="keepalive")
                    print("LOADED", json.dumps(report), flush=True)
                elif command[0] in ("spaced", "rate"):
                    t0, before = time.monotonic(), loader.changes
                    if command[0] == "spaced":
                        await loader.spaced(int(command[1]), float(command[2]), rng)
                    else:
                        await loader.rate(float(command[1]), float(command[2]), rng)
                    print("DONE", json.dumps({"changes": loader.changes - before, "errors": loader.errors,
                                              "seconds": round(time.monotonic() - t0, 3)}), flush=True)
                else:
                    print(f"# unknown command {command!r}", file=sys.stderr, flush=True)
        finally:
            if keepalive is not None:
                keepalive.cancel()
                await asyncio.gather(keepalive, return_exceptions=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="etcd host:port")
    parser.add_argument("--sites", type=int, required=True)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--root", type=Path, required=True, help="mesh root CA directory (meshfed ca init)")
    parser.add_argument("--pki", type=Path, required=True, help="where to write each site's gateway leaf")
    parser.add_argument("--lease-ttl", type=int, default=60)
    parser.add_argument("--txn-ops", type=int, default=100, help="operations per bulk transaction")
    parser.add_argument("--txn-bytes", type=int, default=1_400_000, help="bytes per bulk transaction")
    parser.add_argument("--in-flight", type=int, default=4, help="bulk transactions in flight at once")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
