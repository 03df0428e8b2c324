"""The pure mirror core: events, resync differences, rejected records and the MCS conflict rule."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from federation.core.records import ServicePort, ServiceType
from federation.core.view import MeshView, ServiceAdded, ServiceChanged, ServiceRemoved, SiteAdded, resolve
from tests.util import export, site

KEYS = Keys()


def _put_export(cat: Catalog, e: object) -> list[object]:
    return list(cat.put(KEYS.service(e.site, e.namespace, e.name), encode_export(e)).events)  # type: ignore[attr-defined]


def test_put_change_and_delete_emit_typed_events() -> None:
    cat = Catalog(KEYS)
    assert cat.put(KEYS.site("east"), encode_site(site("east"))).events == [SiteAdded(site("east"))]
    web = export("east")
    assert _put_export(cat, web) == [ServiceAdded(web)]
    assert _put_export(cat, web) == []  # same bytes: nothing happened
    web2 = export("east", addresses=("127.0.0.11",))
    assert _put_export(cat, web2) == [ServiceChanged(web2, web)]
    assert cat.delete(KEYS.service("east", "shop", "web")).events == [ServiceRemoved(web2)]


def test_resync_emits_only_the_difference() -> None:
    cat = Catalog(KEYS)
    same, gone, changed = export("east", "same"), export("east", "gone"), export("east", "changed")
    for e in (same, gone, changed):
        _put_export(cat, e)
    changed2 = dataclasses.replace(changed, ports=(ServicePort("http", 81),))
    new = export("east", "new")
    listing = {KEYS.service("east", "shop", e.name): encode_export(e) for e in (same, changed2, new)}
    out = cat.resync(listing, revision=42)
    assert sorted(type(e).__name__ for e in out.events) == ["ServiceAdded", "ServiceChanged", "ServiceRemoved"]
    assert cat.revision == 42


def test_invalid_record_is_rejected_and_replaces_the_valid_one() -> None:
    cat = Catalog(KEYS)
    _put_export(cat, export("east"))
    out = cat.put(KEYS.service("east", "shop", "web"), b"not json")
    assert out.rejected[0].reason.startswith("value is not JSON")
    assert [type(e).__name__ for e in out.events] == ["ServiceRemoved"]
    assert KEYS.service("east", "shop", "web") in cat.rejected
    _put_export(cat, export("east"))
    assert not cat.rejected


def test_oldest_export_wins_and_conflicts_are_named() -> None:
    a = dataclasses.replace(export("east"), exported_at=100.0)
    b = dataclasses.replace(export("west", ports=(ServicePort("http", 9090),)), exported_at=50.0)
    c = dataclasses.replace(export("north", type=ServiceType.HEADLESS), exported_at=200.0)
    d = dataclasses.replace(export("south"), exported_at=300.0)
    svc = resolve([a, b, c, d])
    assert svc.ports == (ServicePort("http", 9090),)  # west's: the oldest
    assert svc.sites == ("east", "south", "west")  # same type: members, but only west serves http
    assert svc.serving == {"http": frozenset({"west"})}
    assert {x.site for x in svc.conflicts} == {"east", "north", "south", "west"}  # every export is told
    assert any("type Headless differs" in x.reason for x in svc.conflicts)
    assert {x.site: x.kind for x in svc.conflicts} == {"east": "type", "north": "type", "south": "type",
                                                       "west": "type"}
    assert all(x.kinds == ("type", "ports") for x in svc.conflicts)


def test_view_leaves_out_exports_without_a_site_record() -> None:
    cat = Catalog(KEYS)
    _put_export(cat, export("east"))
    assert dict(cat.view().services()) == {}
    cat.put(KEYS.site("east"), encode_site(site("east")))
    assert list(cat.view().services()) == [("shop", "web")]


_ops = st.lists(st.tuples(st.sampled_from(["put-site", "del-site", "put-export", "del-export"]),
                          st.sampled_from(["east", "west", "edge"]), st.sampled_from(["web", "api"]),
                          st.sampled_from([80, 81]), st.floats(min_value=0, max_value=10)), max_size=40)


@given(_ops)
def test_incremental_services_equal_a_fresh_computation(ops: list[tuple[str, str, str, int, float]]) -> None:
    cat = Catalog(KEYS)
    for op, site_name, name, port, stamp in ops:
        if op == "put-site":
            cat.put(KEYS.site(site_name), encode_site(site(site_name)))
        elif op == "del-site":
            cat.delete(KEYS.site(site_name))
        elif op == "put-export":
            e = dataclasses.replace(export(site_name, name, ports=(ServicePort("http", port),)), exported_at=stamp)
            _put_export(cat, e)
        else:
            cat.delete(KEYS.service(site_name, "shop", name))
        view = cat.view()
        fresh = MeshView(sites=dict(view.sites), exports=dict(view.exports))
        assert dict(view.services()) == dict(fresh.services())
