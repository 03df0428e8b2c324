"""Endpoint chunks: layouts, placement, and a catalog fed chunked records seeing what one fed whole records sees."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.catalog import Catalog, Listed
from federation.core.chunks import decode_chunk, encode_chunk, place, plan_layout
from federation.core.codec import Layout, encode_export
from federation.core.errors import RecordError
from federation.core.keys import ChunkKey, Keys
from federation.core.records import Endpoint, EndpointPort, ServiceExport, ServicePort
from federation.core.view import Event, MeshView, ServiceAdded, ServiceChanged, ServiceRemoved
from federation.registry.publishing import DeleteOp, Memo, PutOp, Stored, desired_records, packed, plan
from tests.util import site

KEYS = Keys()
SIZE = 4
"""A small chunk size, so that a few endpoints cross chunk count boundaries both ways."""


def _endpoint(n: int, ready: bool = True) -> Endpoint:
    return Endpoint((f"10.0.{n // 250}.{n % 250 + 1}",), ready=ready)


def _export(name: str, endpoints: tuple[Endpoint, ...]) -> ServiceExport:
    return ServiceExport("east", "shop", name, (ServicePort("http", 80),), endpoints=endpoints, exported_at=1.0)


def test_layout_keeps_its_chunk_count_while_it_fits_and_takes_a_new_generation_when_not() -> None:
    assert plan_layout(100, 0, None, 5) is None  # chunking off
    assert plan_layout(100, 100, None, 5) is None  # fits one record
    first = plan_layout(101, 100, None, 5)
    assert first == Layout(2, 5)
    assert plan_layout(60, 100, first, 9) is first  # wavering around a boundary keeps the layout
    assert plan_layout(300, 100, first, 9) is first
    grown = plan_layout(301, 100, first, 3)  # the clock went back: still a later generation
    assert grown == Layout(4, 6)
    assert plan_layout(49, 100, first, 9) is None  # small again: back to a whole record


def test_placement_is_stable_so_one_endpoint_change_touches_one_chunk() -> None:
    endpoints = tuple(_endpoint(i) for i in range(250))
    before = place(endpoints, 3)
    changed = tuple(dataclasses.replace(e, ready=False) if i == 17 else e for i, e in enumerate(endpoints))
    after = place(changed, 3)
    assert sorted(map(len, before)) == sorted(map(len, after))
    assert sum(map(len, before)) == 250
    assert sum(a != b for a, b in zip(before, after, strict=True)) == 1


def test_chunk_round_trips_and_names_its_key() -> None:
    web = _export("web", ())
    eps = (Endpoint(("10.0.0.1",), (EndpointPort("http", 8080),), hostname="a"), _endpoint(2))
    chunk = decode_chunk(ChunkKey("east", "shop", "web", 1), encode_chunk(web, 1, 7, eps))
    assert (chunk.index, chunk.generation, chunk.endpoints) == (1, 7, eps)
    assert chunk.hostnames == {"a"}
    assert chunk.port_names == {"http"}
    with pytest.raises(RecordError, match="index"):
        decode_chunk(ChunkKey("east", "shop", "web", 2), encode_chunk(web, 1, 7, eps))


def test_chunk_of_an_older_generation_is_refused_and_a_mixed_set_never_enters_the_view() -> None:
    cat = Catalog(KEYS)
    big = _export("web", tuple(_endpoint(i) for i in range(10)))
    old = desired_records(KEYS, site("east"), [big], {}, 1.0, SIZE)
    for k, v in old.items():
        cat.put(k, v)
    assert len(cat.view().exports[("east", "shop", "web")].endpoints) == 10
    stale_chunk = KEYS.chunk("east", "shop", "web", 0)
    bigger = _export("web", tuple(_endpoint(i) for i in range(40)))
    new = desired_records(KEYS, site("east"), [bigger], {k: Stored(v, 1) for k, v in old.items()}, 2.0, SIZE)
    assert new[stale_chunk] != old[stale_chunk]
    cat.put(KEYS.service("east", "shop", "web"), new[KEYS.service("east", "shop", "web")])
    # Only the export record of the new layout is in: the view keeps the last complete export.
    assert len(cat.view().exports[("east", "shop", "web")].endpoints) == 10
    out = cat.put(stale_chunk, old[stale_chunk] + b" ")  # an old chunk written again (a replay)
    assert out.rejected
    assert "older than its export" in out.rejected[0].reason
    for k, v in new.items():
        cat.put(k, v)
    assert len(cat.view().exports[("east", "shop", "web")].endpoints) == 40
    lone = Catalog(KEYS)  # chunks without their export record make no export
    for k, v in new.items():
        if "/endpoints/" in k:
            lone.put(k, v)
    assert not lone.view().exports


def _norm(e: ServiceExport) -> ServiceExport:
    return dataclasses.replace(e, endpoints=tuple(sorted(e.endpoints, key=repr)))


def _net(events: list[Event]) -> list[tuple[str, str]]:
    """What the events of one revision did, service by service, as a consumer of one view sees it: several
    chunks of one export rewritten in one transaction may come as a chain of changes (A to B, B to C: A to C),
    and a change of the endpoints' order only is none."""
    first: dict[object, ServiceExport | None] = {}
    last: dict[object, ServiceExport | None] = {}
    out = []
    for ev in events:
        if isinstance(ev, ServiceAdded | ServiceChanged | ServiceRemoved):
            key = ev.export.service
            first.setdefault(key, ev.previous if isinstance(ev, ServiceChanged) else
                             ev.export if isinstance(ev, ServiceRemoved) else None)
            last[key] = None if isinstance(ev, ServiceRemoved) else ev.export
        else:
            out.append((type(ev).__name__, repr(ev)))
    for key, old in first.items():
        a, b = (_norm(old) if old else None), (_norm(last[key]) if last[key] else None)  # type: ignore[arg-type]
        if a != b:
            out.append(("added" if a is None else "removed" if b is None else "changed", repr(b or a)))
    return sorted(out)


def _addresses(view: MeshView) -> dict[tuple[str, str], set[str]]:
    return {e.service: {ep.addresses[0] for ep in e.endpoints} for e in view.exports.values()}


def _exports(view: MeshView) -> dict[object, ServiceExport]:
    return {k: _norm(v) for k, v in view.exports.items()}


class _Writer:
    """The real publishing plan of one site, applied to a dict as etcd would, one revision per step."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.actual: dict[str, Stored] = {}
        self.memo: Memo = {}

    def step(self, exports: list[ServiceExport], now: float) -> list[PutOp | DeleteOp]:
        desired = desired_records(KEYS, site("east"), exports, self.actual, now, self.chunk_size, self.memo)
        assert desired == desired_records(KEYS, site("east"), exports, self.actual, now, self.chunk_size)
        ops = plan(desired, self.actual, 1)
        for op in ops:
            if isinstance(op, PutOp):
                self.actual[op.key] = Stored(op.value, 1)
            else:
                del self.actual[op.key]
        return ops


_services = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.lists(st.tuples(st.integers(0, 60), st.booleans()), max_size=30, unique_by=lambda t: t[0]),
    max_size=3,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_services, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_a_catalog_fed_chunked_records_sees_what_one_fed_whole_records_sees(
        steps: list[dict[str, list[tuple[int, bool]]]], rnd: random.Random) -> None:
    whole, chunked = _Writer(0), _Writer(SIZE)
    cat_whole, cat_chunked = Catalog(KEYS), Catalog(KEYS)
    for rev, services in enumerate(steps, start=1):
        exports = [_export(name, tuple(_endpoint(n, ready) for n, ready in eps)) for name, eps in sorted(services.items())]
        events: dict[str, list[Event]] = {"whole": [], "chunked": []}
        before = _addresses(cat_whole.view())
        for label, writer, cat in (("whole", whole, cat_whole), ("chunked", chunked, cat_chunked)):
            ops = writer.step(exports, float(rev))
            rnd.shuffle(ops)  # etcd gives the events of one transaction in any order
            for op in ops:
                out = cat.put(op.key, op.value, rev) if isinstance(op, PutOp) else cat.delete(op.key, rev)
                assert not out.rejected, out.rejected
                events[label] += out.events
        after = _addresses(cat_whole.view())
        for ev in events["chunked"]:  # halfway through a transaction: never two layouts mixed
            if isinstance(ev, ServiceAdded | ServiceChanged):
                seen = [e.addresses[0] for e in ev.export.endpoints]
                old, new = before.get(ev.export.service, set()), after.get(ev.export.service, set())
                assert len(seen) == len(set(seen)), "an endpoint twice"
                assert old & new <= set(seen) <= old | new, "an endpoint lost or invented"
        assert _net(events["whole"]) == _net(events["chunked"])
        assert _exports(cat_whole.view()) == _exports(cat_chunked.view())
    fresh = Catalog(KEYS)  # a reader that lists the chunked records once sees the same
    fresh.resync({k: Listed(v.value, 1) for k, v in chunked.actual.items()}, 1)
    assert _exports(fresh.view()) == _exports(cat_whole.view())


def test_whole_record_is_what_an_older_writer_writes_and_is_read_beside_chunked_ones() -> None:
    cat = Catalog(KEYS)
    old = _export("old", tuple(_endpoint(i) for i in range(12)))
    cat.put(KEYS.service("east", "shop", "old"), encode_export(old))
    for k, v in desired_records(KEYS, site("east"), [_export("new", old.endpoints)], {}, 1.0, SIZE).items():
        cat.put(k, v)
    got = cat.view().exports
    assert _norm(got[("east", "shop", "old")]).endpoints == _norm(got[("east", "shop", "new")]).endpoints


def test_a_shrinking_layout_read_export_first_keeps_the_old_export_until_its_chunks_are_in() -> None:
    writer, cat = _Writer(SIZE), Catalog(KEYS)
    for op in writer.step([_export("web", tuple(_endpoint(i) for i in range(30)))], 1.0):
        assert isinstance(op, PutOp)
        cat.put(op.key, op.value, 1)
    ops = writer.step([_export("web", tuple(_endpoint(i) for i in range(7)))], 2.0)  # 8 chunks to 2
    header = next(op for op in ops if op.key == KEYS.service("east", "shop", "web"))
    assert isinstance(header, PutOp)
    cat.put(header.key, header.value, 2)  # chunks 0 and 1 of the old layout are still there
    assert len(cat.view().exports[("east", "shop", "web")].endpoints) == 30
    for op in ops:
        if op is not header:
            cat.put(op.key, op.value, 2) if isinstance(op, PutOp) else cat.delete(op.key, 2)
    assert len(cat.view().exports[("east", "shop", "web")].endpoints) == 7


def test_a_layout_written_over_several_transactions_is_seen_whole_or_not_at_all() -> None:
    writer, cat = _Writer(SIZE), Catalog(KEYS)
    old = _export("web", tuple(_endpoint(i) for i in range(10)))
    for op in writer.step([old], 1.0):
        cat.put(op.key, op.value, 1)
    new = _export("web", tuple(_endpoint(i) for i in range(40, 80)))
    state = {k: v.value for k, v in writer.actual.items()}
    batches = packed(writer.step([new], 2.0), 3)  # a transaction of 3 operations: 10 chunks and the record take 4
    assert len(batches) > 1
    for rev, batch in enumerate(batches, start=2):
        for op in batch:
            out = cat.put(op.key, op.value, rev) if isinstance(op, PutOp) else cat.delete(op.key, rev)
            assert not out.rejected
            if isinstance(op, PutOp):
                state[op.key] = op.value
            else:
                del state[op.key]
        assert not Catalog(KEYS).resync(state, rev).rejected  # a reader listing in between: nothing refused
        got = _norm(cat.view().exports[("east", "shop", "web")])
        assert got == (_norm(new) if rev == len(batches) + 1 else _norm(old))
