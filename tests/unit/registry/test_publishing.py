"""The publisher's plan: only real differences become writes; exported_at survives restarts."""

from __future__ import annotations

import json

from federation.core.codec import encode_site
from federation.core.keys import Keys
from federation.registry.publishing import DeleteOp, PutOp, Stored, desired_records, plan
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
