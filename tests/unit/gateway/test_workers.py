"""What the agent sends its gateway worker processes: the whole of what a gateway reads at start, then only
what changed (issue 11: a registry change costs the workers in proportion to the change)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from federation.core.view import Changes, MeshView
from gateway.workers import apply_delta, decode_view, encode_delta, encode_view
from tests.dnshelp import export, site

KEYS = Keys()
ME = "east"

_events = st.lists(st.tuples(st.sampled_from(["export", "unexport", "site", "unsite"]),
                             st.sampled_from([ME, "west", "edge"]),
                             st.sampled_from(["web", "db", "api"]),
                             st.integers(1, 3)), max_size=30)


def _held(view: MeshView) -> tuple[dict[str, object], dict[object, object]]:
    return dict(view.sites), {k: e for k, e in view.exports.items() if e.site == ME}


@settings(deadline=None)
@given(_events)
def test_the_whole_view_then_deltas_give_what_a_fresh_whole_view_gives(events: list[tuple[str, str, str, int]]) -> None:
    cat = Catalog(KEYS)
    first = cat.view()
    held: set[tuple[str, str]] = set()
    worker = decode_view(encode_view(first, ME))
    sent = first
    for rev, (what, where, name, n) in enumerate(events, 1):
        if what == "export":
            record = export(where, "shop", name, [f"10.0.0.{n}"])
            cat.put(KEYS.service(where, "shop", name), encode_export(record), rev)
        elif what == "unexport":
            cat.delete(KEYS.service(where, "shop", name), rev)
        elif what == "site":
            cat.put(KEYS.site(where), encode_site(site(where, zone="abc"[n - 1])), rev)
        else:
            cat.delete(KEYS.site(where), rev)
        if n == 2:  # views are sent only now and then: a delta spans several changes
            continue
        v = cat.view()
        changes = v.changes_since(sent.generation)
        assert changes is not None
        line = encode_delta(v, ME, changes, held)
        if line is not None:
            worker = apply_delta(worker, ME, line)
        sent = v
        assert _held(worker) == _held(decode_view(encode_view(v, ME)))
        assert held == {(e.namespace, e.name) for e in v.exports.values() if e.site == ME}


def test_another_sites_export_sends_nothing() -> None:
    cat = Catalog(KEYS)
    cat.put(KEYS.site("west"), encode_site(site("west")), 1)
    before = cat.view()
    cat.put(KEYS.service("west", "shop", "web"), encode_export(export("west", "shop", "web", ["10.0.0.1"])), 2)
    changes = cat.view().changes_since(before.generation)
    assert changes == Changes(services=frozenset({("shop", "web")}))
    assert encode_delta(cat.view(), ME, changes, set()) is None
