"""What one endpoint change costs with whole records and with endpoint chunks, in the same run (no etcd).

The writer is the publisher's pure plan (`desired_records` + `plan`, unsigned, with its memo, for a site of
ten such services); the reader is a catalog taking
the keys the plan writes and making its next view (decode, validate, assemble, resolve). One headless service
whose endpoints carry hostnames (so each change moves one endpoint's address and nothing else); every
endpoint changes in turn. Printed by tests/bench/registry.py before its etcd runs.
"""

from __future__ import annotations

import dataclasses
import time

from federation.core.catalog import Catalog
from federation.core.keys import Keys
from federation.core.records import Endpoint, ServiceExport, ServicePort, ServiceType
from federation.registry.publishing import Memo, PutOp, Stored, desired_records, plan
from tests.util import site

KEYS = Keys()


def change_costs(per: int, chunk_size: int, changes: int = 300) -> dict[str, float]:
    """Per endpoint change: writer and reader seconds (CPU time of this process: the machine is shared), keys
    and bytes written."""
    endpoints = [Endpoint((f"10.0.{j // 250}.{j % 250 + 1}",), hostname=f"ep{j}") for j in range(per)]
    export = ServiceExport("east", "bench", "svc", (ServicePort("http", 80),), type=ServiceType.HEADLESS,
                           endpoints=tuple(endpoints), exported_at=1.0)
    actual: dict[str, Stored] = {}
    memo: Memo = {}  # as the publisher keeps it: the site's other exports cost nothing
    others = [dataclasses.replace(export, name=f"other{i}") for i in range(9)]
    catalog = Catalog(KEYS)
    writer = reader = 0.0
    keys = size = 0
    for c in range(changes + 1):
        if c:
            j = c % per
            endpoints[j] = dataclasses.replace(endpoints[j], addresses=(f"10.1.{c // 250}.{c % 250 + 1}",))
            export = dataclasses.replace(export, endpoints=tuple(endpoints))
        t0 = time.process_time()
        ops = plan(desired_records(KEYS, site("east"), [export, *others], actual, 2.0, chunk_size, memo), actual, 1)
        t1 = time.process_time()
        for op in ops:
            if isinstance(op, PutOp):
                catalog.put(op.key, op.value, c + 1)
            else:
                catalog.delete(op.key, c + 1)
        catalog.view()
        t2 = time.process_time()
        for op in ops:
            if isinstance(op, PutOp):
                actual[op.key] = Stored(op.value, 1)
            else:
                actual.pop(op.key, None)
        if c:  # the first round is the initial write
            writer += t1 - t0
            reader += t2 - t1
            keys += len(ops)
            size += sum(len(op.value) for op in ops if isinstance(op, PutOp))
    got = catalog.view().exports[("east", "bench", "svc")]
    assert sorted(got.endpoints, key=repr) == sorted(endpoints, key=repr)
    return {"writer": writer / changes, "reader": reader / changes, "keys": keys / changes, "bytes": size / changes}


def print_change_costs(per: int, sizes: list[int]) -> None:
    """One table: whole records against chunks, for `per` endpoints (the benchmark's) and for 1,000 (chunks of 100)."""
    print("one endpoint change of one headless service, writer plan and reader catalog (unsigned, same run; CPU "
          "time, the least of 3 runs)")
    print(f"{'endpoints':>10}{'form':>18}{'keys/change':>13}{'bytes/change':>14}{'writer us':>11}{'reader us':>11}"
          f"{'reader vs whole':>17}")
    cases = [(per, s) for s in sizes] + ([(1000, 0), (1000, 100)] if any(sizes) else [])
    whole: dict[int, float] = {}
    for count, size in cases:
        runs = [change_costs(count, size, max(50, 30_000 // count)) for _ in range(3)]
        c = {k: min(r[k] for r in runs) for k in runs[0]}  # the least disturbed of three runs
        if not size:
            whole[count] = c["reader"]
        ratio = f"{c['reader'] / whole[count]:.2f}x" if count in whole else "-"
        form = f"chunks of {size}" if size else "whole record"
        print(f"{count:>10}{form:>18}{c['keys']:>13.2f}{c['bytes']:>14.0f}{c['writer'] * 1e6:>11.0f}"
              f"{c['reader'] * 1e6:>11.0f}{ratio:>17}")
