"""The listener plan followed change by change equals a plan made from scratch, and looks only at what changed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from federation.core.view import MeshView
from gateway.balancing import ListenerKey, Placement
from gateway.listening import ListenerPlan
from tests.pkihelp import export
from tests.util import site

KEYS = Keys()
SITES = ("me", "s2", "s3")
NAMES = ("web", "db", "api")

_ops = st.lists(st.one_of(
    st.tuples(st.just("export"), st.sampled_from(SITES), st.sampled_from(NAMES), st.sampled_from((80, 81))),
    st.tuples(st.just("unexport"), st.sampled_from(SITES), st.sampled_from(NAMES)),
    st.tuples(st.just("site"), st.sampled_from(SITES[1:]), st.booleans()),
), min_size=1, max_size=25)


def _never(view: MeshView, key: ListenerKey) -> bool:
    return False


def _skip_db(view: MeshView, key: ListenerKey) -> bool:
    return key[1] == "db"


@settings(max_examples=120)
@given(_ops, st.booleans(), st.booleans())
def test_following_changes_equals_a_fresh_plan(ops: list[tuple[object, ...]], include_own: bool,
                                               skip_db: bool) -> None:
    skip = _skip_db if skip_db else _never
    cat = Catalog(KEYS)
    for rev, name in enumerate(SITES, 1):
        cat.put(KEYS.site(name), encode_site(site(name, f"n-{name}")), rev)
    placement = Placement()
    plan = ListenerPlan("me", include_own, skip)
    bound: set[ListenerKey] = set()
    step = plan.step(cat.view(), placement, bound)
    assert step.touched is None
    for rev, op in enumerate(ops, 10):
        if op[0] == "export":
            cat.put(KEYS.service(str(op[1]), "shop", str(op[2])),
                    encode_export(export(str(op[1]), "shop", str(op[2]), int(op[3]))), rev)  # type: ignore[call-overload]
        elif op[0] == "unexport":
            cat.delete(KEYS.service(str(op[1]), "shop", str(op[2])), rev)
        elif op[2]:
            cat.put(KEYS.site(str(op[1])), encode_site(site(str(op[1]), f"n-{op[1]}")), rev)
        else:
            cat.delete(KEYS.site(str(op[1])), rev)
        view = cat.view()
        step = plan.step(view, placement, bound)
        # Apply the step the way the egress does: listeners of checked keys open or close.
        bound = (bound - step.check) | set(step.wanted)
        fresh = ListenerPlan("me", include_own, skip).step(view, placement, ())
        assert bound == set(fresh.wanted)
        if step.touched is not None:
            assert {k[:2] for k in step.check} <= step.touched


def test_a_new_fallback_looks_at_everything() -> None:
    cat = Catalog(KEYS)
    cat.put(KEYS.site("s2"), encode_site(site("s2", "n2")), 1)
    cat.put(KEYS.service("s2", "shop", "web"), encode_export(export("s2", "shop", "web", 80)), 2)
    plan = ListenerPlan("me", False, _never)
    first = plan.step(cat.view(), Placement(), ())
    assert first.wanted == {("shop", "web", "tcp"): ("127.0.0.1", 0)}
    again = plan.step(cat.view(), Placement(fallback=("127.0.0.2", 0)), first.wanted)
    assert again.touched is None
    assert again.wanted == {("shop", "web", "tcp"): ("127.0.0.2", 0)}


def test_one_export_change_looks_at_its_service_only() -> None:
    cat = Catalog(KEYS)
    cat.put(KEYS.site("s2"), encode_site(site("s2", "n2")), 1)
    for rev, name in enumerate(NAMES, 2):
        cat.put(KEYS.service("s2", "shop", name), encode_export(export("s2", "shop", name, 80)), rev)
    plan = ListenerPlan("me", False, _never)
    first = plan.step(cat.view(), Placement(), ())
    cat.put(KEYS.service("s2", "shop", "db"), encode_export(export("s2", "shop", "db", 81)), 9)
    step = plan.step(cat.view(), Placement(), first.wanted)
    assert step.touched == frozenset({("shop", "db")})
    assert step.check == {("shop", "db", "tcp")}
