"""The heartbeat record and how the catalog takes it: a lag sample, never a new view."""

from __future__ import annotations

import pytest

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.errors import RecordError
from federation.core.heartbeat import Heartbeat, decode_heartbeat, encode_heartbeat
from federation.core.keys import HeartbeatKey, Keys
from tests.util import export, site

KEYS = Keys()


def test_a_heartbeat_round_trips_and_has_a_key_of_its_own() -> None:
    beat = Heartbeat("east", 1_700_000_000.123, 30.0, 0.0125)
    assert decode_heartbeat(HeartbeatKey("east"), encode_heartbeat(beat)) == beat
    assert KEYS.parse(KEYS.heartbeat("east")) == HeartbeatKey("east")
    unsynced = Heartbeat("east", 1_700_000_000.5, 30.0)
    assert b"clockError" not in encode_heartbeat(unsynced)
    assert decode_heartbeat(HeartbeatKey("east"), encode_heartbeat(unsynced)).clock_error is None


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"schema":1,"kind":"Heartbeat","site":"west","at":1,"interval":30}', "names site 'west'"),
    (b'{"schema":1,"kind":"Heartbeat","site":"east","at":"now","interval":30}', "at is not a time"),
    (b'{"schema":1,"kind":"Heartbeat","site":"east","at":1,"interval":-1}', "interval -1 is out of range"),
    (b'{"schema":1,"kind":"Heartbeat","site":"east","at":1}', "interval is missing"),
    (b'{"schema":1,"kind":"Heartbeat","site":"east","at":1,"interval":1,"clockErrorMs":true}', "not a number"),
    (b'{"schema":1,"kind":"Site","site":"east","at":1,"interval":1}', "kind 'Site'"),
])
def test_a_bad_heartbeat_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        decode_heartbeat(HeartbeatKey("east"), raw)


def test_a_heartbeat_makes_no_new_view_and_no_event() -> None:
    cat = Catalog(KEYS)
    cat.put(KEYS.site("east"), encode_site(site("east")), 1)
    cat.put(KEYS.service("east", "shop", "web"), encode_export(export("east")), 2)
    view = cat.view()
    for rev in range(3, 13):
        out = cat.put(KEYS.heartbeat("east"), encode_heartbeat(Heartbeat("east", 1000.0 + rev, 30.0)), rev)
        assert out.events == []
        assert not out.changed
        assert not out.rejected
        assert out.beat == Heartbeat("east", 1000.0 + rev, 30.0)
    # What readers follow stays as it was: no service or site counts as changed.
    assert view.changes_since(view.generation) is not None
    assert not view.changes_since(view.generation).services  # type: ignore[union-attr]
    out = cat.delete(KEYS.heartbeat("east"), 13)
    assert out.beat_gone == "east"
    assert out.events == []
    assert not out.changed
    assert cat.view().generation == view.generation


def test_a_malformed_heartbeat_is_rejected_and_disturbs_nothing() -> None:
    cat = Catalog(KEYS)
    cat.put(KEYS.site("east"), encode_site(site("east")), 1)
    view = cat.view()
    out = cat.put(KEYS.heartbeat("east"), b"not json", 2)
    assert out.beat is None
    assert [r.key for r in out.rejected] == [KEYS.heartbeat("east")]
    assert "east" in cat.view().sites
    assert cat.view().generation == view.generation
