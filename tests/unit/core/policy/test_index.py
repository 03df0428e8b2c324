"""The last valid policy per key: a corrupt record is rejected and counted, the previous one stays."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from federation.core.keys import Keys
from federation.core.policy.codec import encode_policy, from_document, policy_key
from federation.core.policy.index import PolicyIndex
from federation.core.policy.model import TrafficPolicy

KEYS = Keys()
KEY = policy_key(KEYS, "shop", "web")


def policy(attempts: int, name: str = "web") -> TrafficPolicy:
    return from_document({"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
                          "metadata": {"namespace": "shop", "name": name}, "spec": {"retries": {"attempts": attempts}}})


def test_a_corrupt_put_keeps_the_previous_valid_policy() -> None:
    index = PolicyIndex(KEYS)
    out = index.put(KEY, encode_policy(policy(2)), revision=5)
    assert out.changed == {("shop", "web"): policy(2)}
    out = index.put(KEY, b'{"schema": 1, "kind": "TrafficPolicy"', revision=6)
    assert not out.changed
    [rej] = out.rejected
    assert rej.key == KEY
    assert "not JSON" in rej.reason
    assert rej.kept == policy(2)
    assert index.get("shop", "web") == policy(2)
    assert index.rejections == 1
    assert KEY in index.rejected
    out = index.put(KEY, encode_policy(policy(4)), revision=7)
    assert out.changed == {("shop", "web"): policy(4)}
    assert not index.rejected
    assert index.revision == 7


def test_a_corrupt_first_put_means_no_policy_and_delete_removes_a_kept_one() -> None:
    index = PolicyIndex(KEYS)
    [rej] = index.put(KEY, b"garbage").rejected
    assert rej.kept is None
    assert index.get("shop", "web") is None
    index.put(KEY, encode_policy(policy(2)))
    index.put(KEY, b"garbage")
    assert index.delete(KEY).changed == {("shop", "web"): None}
    assert index.get("shop", "web") is None
    assert not index.rejected


def test_a_record_under_the_wrong_key_is_rejected() -> None:
    index = PolicyIndex(KEYS)
    [rej] = index.put(KEY, encode_policy(policy(2, name="db"))).rejected
    assert "its key names shop/web" in rej.reason
    [rej] = index.put(KEYS.mesh("policies", "traffic", "shop"), encode_policy(policy(2))).rejected
    assert "does not fit the layout" in rej.reason


def test_an_unchanged_put_reports_nothing() -> None:
    index = PolicyIndex(KEYS)
    index.put(KEY, encode_policy(policy(2)))
    assert not index.put(KEY, encode_policy(policy(2))).changed
    index.put(KEY, b"bad")
    assert not index.put(KEY, b"bad").rejected  # the same bad bytes are not counted again
    assert index.rejections == 1


def test_resync_deletes_missing_keys_and_keeps_the_old_policy_for_a_corrupt_one() -> None:
    index = PolicyIndex(KEYS)
    db = policy_key(KEYS, "shop", "db")
    index.resync({KEY: encode_policy(policy(2)), db: encode_policy(policy(3, "db"))}, revision=10)
    out = index.resync({KEY: b"corrupt"}, revision=20)
    assert out.changed == {("shop", "db"): None}
    assert [r.key for r in out.rejected] == [KEY]
    assert dict(index.policies()) == {("shop", "web"): policy(2)}
    assert index.revision == 20


@given(st.lists(st.tuples(st.sampled_from(["web", "db"]), st.one_of(st.none(), st.integers(1, 3), st.just(0)))))
def test_the_index_always_holds_the_last_valid_policy_of_each_key(ops: list[tuple[str, int | None]]) -> None:
    """Ops: (service, None = delete | 0 = corrupt put | n = valid put with n attempts)."""
    index, expected = PolicyIndex(KEYS), {}
    for name, op in ops:
        key = policy_key(KEYS, "shop", name)
        if op is None:
            index.delete(key)
            expected.pop(name, None)
        elif op == 0:
            index.put(key, b"\x00corrupt")
        else:
            index.put(key, encode_policy(policy(op, name)))
            expected[name] = policy(op, name)
        assert {n: p for (_, n), p in index.policies().items()} == expected
