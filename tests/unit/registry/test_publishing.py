"""The publisher's plan: only real differences become writes; exported_at survives restarts."""

from __future__ import annotations

import dataclasses
import json

from federation.core.codec import encode_site
from federation.core.keys import Keys
from federation.core.records import Endpoint, ServiceExport
from federation.registry.publishing import DeleteOp, PutOp, Stored, desired_records, packed, plan
from tests.util import export, site

KEYS = Keys()


def test_plan_writes_nothing_when_everything_matches() -> None:
    desired = desired_records(KEYS, site("east"), [export("east")], {}, now=10.0)
    actual = {k: Stored(v, 7) for k, v in desired.items()}
    assert plan(desired, actual, lease=7) == []


def test_plan_rebinds_keys_of_an_old_lease_and_deletes_leftovers() -> None:
    desired = desired_records(KEYS, site("east"), [export("east")], {}, now=10.0)
    actual = {k: Stored(v, 6) for k, v in desired.items()}
    actual[KEYS.service("east", "shop", "old")] = Stored(b"{}", 6)
    ops = plan(desired, actual, lease=7)
    assert [type(op) for op in ops] == [PutOp, PutOp, DeleteOp]
    assert ops[-1] == DeleteOp(KEYS.service("east", "shop", "old"))


def test_exported_at_is_kept_from_the_stored_record() -> None:
    first = desired_records(KEYS, site("east"), [export("east")], {}, now=10.0)
    actual = {k: Stored(v, 1) for k, v in first.items()}
    again = desired_records(KEYS, site("east"), [export("east")], actual, now=99.0)
    key = KEYS.service("east", "shop", "web")
    assert json.loads(again[key])["exportedAt"] == 10.0
    assert again[KEYS.site("east")] == encode_site(site("east"))


def _big(count: int, down: int | None = None) -> ServiceExport:
    endpoints = tuple(Endpoint((f"10.0.{i // 200}.{i % 200 + 1}",), ready=i != down) for i in range(count))
    return dataclasses.replace(export("east"), endpoints=endpoints, exported_at=1.0)


def _apply(actual: dict[str, Stored], ops: list[PutOp | DeleteOp]) -> None:
    for op in ops:
        if isinstance(op, PutOp):
            actual[op.key] = Stored(op.value, 7)
        else:
            del actual[op.key]


def test_a_large_export_is_written_in_chunks_and_one_endpoint_change_rewrites_one_chunk() -> None:
    actual: dict[str, Stored] = {}
    _apply(actual, plan(desired_records(KEYS, site("east"), [_big(250)], actual, 10.0, 100), actual, 7))
    assert sorted(k for k in actual if "/endpoints/" in k) == [KEYS.chunk("east", "shop", "web", i) for i in range(3)]
    header = json.loads(actual[KEYS.service("east", "shop", "web")].value)
    assert (header["endpointChunks"], header["generation"], "endpoints" in header) == (3, 10_000, False)
    ops = plan(desired_records(KEYS, site("east"), [_big(250, down=42)], actual, 11.0, 100), actual, 7)
    assert len(ops) == 1
    assert "/endpoints/" in ops[0].key
    # Grown past what three chunks hold: a new layout, every chunk and the export rewritten.
    ops = plan(desired_records(KEYS, site("east"), [_big(451)], actual, 12.0, 100), actual, 7)
    assert len([op for op in ops if isinstance(op, PutOp)]) == 1 + 5
    assert json.loads(next(op.value for op in ops if op.key == KEYS.service("east", "shop", "web")))["generation"] == 12_000
    _apply(actual, ops)
    # Chunking turned off: one whole record again, the chunks deleted, in the same plan.
    ops = plan(desired_records(KEYS, site("east"), [_big(451)], actual, 13.0, 0), actual, 7)
    assert [type(op) for op in ops] == [PutOp] + [DeleteOp] * 5


def test_the_ops_of_one_export_share_a_transaction_where_they_fit() -> None:
    ops: list[PutOp | DeleteOp] = [PutOp(KEYS.service("east", "shop", f"s{i}"), b"") for i in range(3)]
    ops += [PutOp(KEYS.chunk("east", "shop", "s1", c), b"") for c in range(4)]
    batches = packed(sorted(ops, key=lambda op: op.key), 4)
    # s0 | four chunks of s1 | s1 itself (more than a transaction holds: its record last) and s2
    assert [len(b) for b in batches] == [1, 4, 2]
    assert {op.key.split("/endpoints/")[0] for op in batches[1]} == {KEYS.service("east", "shop", "s1")}
    assert batches[2][0].key == KEYS.service("east", "shop", "s1")  # its record after all its chunks
    big = [PutOp(KEYS.chunk("east", "shop", "s1", c), b"") for c in range(9)]
    assert [len(b) for b in packed(big, 4)] == [4, 4, 1]
