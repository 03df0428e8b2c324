"""The pure plan of a Kubernetes site's policy sync: it owns what it wrote, and nothing else."""

from __future__ import annotations

import json

from federation.core.codec import dump_json
from federation.core.keys import Keys
from federation.core.policy import access
from federation.core.policy.codec import from_document, policy_key
from federation.core.policy.kinds import ACCESS, TRAFFIC
from federation.registry.etcd import Delete, Put
from federation.registry.policysync import OWNER, plan

KEYS = Keys()
ME = "kubernetes/east"


def traffic(name: str = "web", connect: str = "5s") -> object:
    return from_document({"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
                          "metadata": {"namespace": "shop", "name": name}, "spec": {"timeouts": {"connect": connect}}})


def deny(name: str = "web") -> object:
    return access.from_document({"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPolicy",
                                 "metadata": {"namespace": "shop", "name": name},
                                 "spec": {"rules": [{"name": "no-edge", "action": "Deny", "from": {"sites": ["edge"]}}]}})


def sign(key: str, record: dict) -> bytes:  # type: ignore[type-arg]
    """Stands in for the operator's signer: marks the value as signed."""
    return dump_json(record)[:-1] + b',"sig":{"alg":"ES256","at":1,"kid":"' + b"0" * 32 + b'","value":"' + b"A" * 40 + b'"}}'


def read(_key: str, value: bytes) -> bytes:
    return value.split(b',"sig":')[0] + b"}" if b',"sig":' in value else value


def stored_by(owner: str | None, policy: object, key: str) -> bytes:
    kind = TRAFFIC if key.startswith(TRAFFIC.prefix(KEYS)) else ACCESS
    record = kind.record(policy)
    if owner is not None:
        record["metadata"]["annotations"] = {OWNER: owner}
    return sign(key, record)


def test_declared_policies_are_written_signed_and_marked_as_the_sites() -> None:
    ops, out = plan({("TrafficPolicy", "shop", "web"): traffic(), ("AccessPolicy", "shop", "web"): deny()}, {},
                    KEYS, ME, sign=sign, read=read)
    assert out == {("TrafficPolicy", "shop", "web"): None, ("AccessPolicy", "shop", "web"): None}
    assert sorted(op.key for op in ops) == sorted([policy_key(KEYS, "shop", "web"), access.key_of(KEYS, "shop", "web")])
    for op in ops:
        assert isinstance(op, Put)
        assert b'"sig":{' in op.value
        assert json.loads(read(op.key, op.value))["metadata"]["annotations"] == {OWNER: ME}


def test_an_unchanged_policy_is_not_rewritten_and_a_changed_one_is() -> None:
    key = policy_key(KEYS, "shop", "web")
    stored = {key: stored_by(ME, traffic(), key)}
    assert plan({("TrafficPolicy", "shop", "web"): traffic()}, stored, KEYS, ME, sign=sign, read=read)[0] == []
    ops, _ = plan({("TrafficPolicy", "shop", "web"): traffic(connect="7s")}, stored, KEYS, ME, sign=sign, read=read)
    assert [op.key for op in ops] == [key]


def test_a_policy_written_by_the_cli_or_another_site_is_left_alone_and_the_object_refused() -> None:
    key = policy_key(KEYS, "shop", "web")
    for owner, who in ((None, "with meshfed policy apply"), ("kubernetes/west", "by kubernetes/west")):
        stored = {key: stored_by(owner, traffic(connect="9s"), key)}
        ops, out = plan({("TrafficPolicy", "shop", "web"): traffic()}, stored, KEYS, ME, sign=sign, read=read)
        assert ops == []
        reason, message = out[("TrafficPolicy", "shop", "web")]  # type: ignore[misc]
        assert reason == "Conflict"
        assert who in message
        # ...and never deleted when no object declares it.
        assert plan({}, stored, KEYS, ME, sign=sign, read=read)[0] == []


def test_an_owned_policy_whose_object_is_gone_is_deleted_an_access_policy_by_a_signed_tombstone() -> None:
    tkey, akey = policy_key(KEYS, "shop", "web"), access.key_of(KEYS, "shop", "web")
    stored = {tkey: stored_by(ME, traffic(), tkey), akey: stored_by(ME, deny(), akey)}
    ops, out = plan({}, stored, KEYS, ME, sign=sign, read=read)
    assert out == {}
    assert Delete(tkey) in ops
    [tomb] = [op for op in ops if isinstance(op, Put)]
    assert tomb.key == akey
    assert json.loads(read(akey, tomb.value))["deleted"] is True
    # The tombstone is the site's too: declaring the policy again writes it again.
    stored[akey] = tomb.value
    del stored[tkey]
    assert plan({}, stored, KEYS, ME, sign=sign, read=read)[0] == []
    ops, _ = plan({("AccessPolicy", "shop", "web"): deny()}, stored, KEYS, ME, sign=sign, read=read)
    assert [op.key for op in ops] == [akey]


def test_a_record_that_does_not_verify_is_replaced() -> None:
    key = policy_key(KEYS, "shop", "web")

    def refuse(_key: str, _value: bytes) -> bytes:
        from federation.core.errors import RecordError
        raise RecordError("the policy is not signed by an operator")

    stored = {key: stored_by("kubernetes/west", traffic(connect="9s"), key)}
    ops, out = plan({("TrafficPolicy", "shop", "web"): traffic()}, stored, KEYS, ME, sign=sign, read=refuse)
    assert out[("TrafficPolicy", "shop", "web")] is None
    assert [op.key for op in ops] == [key]


MESH = ("MeshAccessPolicy", "", "default")


def mesh_record(owner: str | None, mesh: access.MeshAccess) -> bytes:
    record = access.encode(access.mesh_to_document(mesh))
    if owner is not None:
        record["metadata"]["annotations"] = {OWNER: owner}
    return sign(access.mesh_key(KEYS), record)


def test_the_mesh_access_policy_is_owned_like_the_others_and_reset_to_the_defaults_when_gone() -> None:
    key, lockdown = access.mesh_key(KEYS), access.MeshAccess(access.Action.DENY)
    ops, out = plan({MESH: lockdown}, {}, KEYS, ME, sign=sign, read=read)
    assert out == {MESH: None}
    [put] = ops
    assert isinstance(put, Put)
    assert put.key == key
    assert json.loads(read(key, put.value))["spec"]["defaultAction"] == "Deny"
    assert json.loads(read(key, put.value))["metadata"]["annotations"] == {OWNER: ME}
    # The object is gone: the defaults, signed and owned by no one (readers keep a record merely deleted).
    [reset] = plan({}, {key: mesh_record(ME, lockdown)}, KEYS, ME, sign=sign, read=read)[0]
    assert isinstance(reset, Put)
    assert b'"sig":{' in reset.value
    assert access.decode_mesh(read(key, reset.value)) == access.MeshAccess()
    assert OWNER.encode() not in reset.value
    assert plan({}, {key: mesh_record(None, access.MeshAccess())}, KEYS, ME, sign=sign, read=read)[0] == []
    # The objects not listed yet (an older ClusterRole, no CRD): the record is left as it is.
    assert plan({}, {key: mesh_record(ME, lockdown)}, KEYS, ME, sign=sign, read=read, mesh=False)[0] == []
    # Written with the CLI, or by another site: left alone, the object refused.
    for owner, who in ((None, "with meshfed policy apply"), ("kubernetes/west", "by kubernetes/west")):
        ops, out = plan({MESH: lockdown}, {key: mesh_record(owner, access.MeshAccess())}, KEYS, ME, sign=sign,
                        read=read)
        assert ops == []
        assert out[MESH] == ("Conflict", f"the registry holds a MeshAccessPolicy written {who}; it is left in force "
                                         "(remove it there to let this object own it)")
