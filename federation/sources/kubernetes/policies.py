"""Pure conversion of TrafficPolicy and AccessPolicy objects (meshfed.io/v1alpha1, deploy/kubernetes/policy-crds.yaml,
access-crds.yaml) into policies, and the `Accepted` condition an agent writes back (`policysync.py` runs the
sync; the registry side, signing and ownership, is `federation/registry/policysync.py`).

The object is the same document `meshfed policy apply` takes; server-side fields (uid, resourceVersion,
managedFields, status...) are ignored. The object's namespace and name are the service it governs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from federation.core.errors import PolicyError
from federation.core.policy.access import KIND as ACCESS_KIND
from federation.core.policy.access import MESH_KIND, AccessPolicy, MeshAccess, mesh_from_document
from federation.core.policy.access import from_document as access_from_document
from federation.core.policy.codec import from_document
from federation.core.policy.model import TrafficPolicy
from federation.sources.kubernetes.conversion import Obj, ObjKey, format_time, key_of

REASON_ACCEPTED = "Accepted"
REASON_INVALID = "Invalid"
ACCEPTED_MESSAGE = "the policy is valid"


@dataclass(slots=True)
class PolicyConversion:
    """What `convert_policies` made: the valid policies by service, and why each other object is invalid."""

    policies: dict[ObjKey, TrafficPolicy] = field(default_factory=dict)
    invalid: dict[ObjKey, str] = field(default_factory=dict)


def convert_policy(obj: Obj) -> TrafficPolicy | AccessPolicy | MeshAccess:
    """The policy of one TrafficPolicy, AccessPolicy or MeshAccessPolicy object; PolicyError naming the field and
    the reason."""
    if obj.get("kind") == ACCESS_KIND:
        return access_from_document(obj)
    if obj.get("kind") == MESH_KIND:
        return mesh_from_document(obj)
    return from_document(obj)


def convert_policies(objects: Iterable[Obj]) -> PolicyConversion:
    """Every TrafficPolicy (or AccessPolicy) object, converted; one invalid object never affects the others."""
    out = PolicyConversion()
    for obj in objects:
        if not isinstance(obj, Mapping):
            continue
        key = key_of(obj)
        try:
            out.policies[key] = convert_policy(obj)  # type: ignore[assignment]
        except PolicyError as exc:
            out.invalid[key] = str(exc)
    return out


def policy_conditions(previous: Sequence[Obj], error: str | None, now: float, generation: int = 0, *,
                      reason: str = REASON_INVALID, accepted: str = ACCEPTED_MESSAGE) -> list[dict[str, Any]]:
    """The `Accepted` condition of one object (False with `reason` and the `error` message, or True saying
    `accepted`); lastTransitionTime kept while its status does not change."""
    status, reason, message = (("False", reason, error) if error is not None
                               else ("True", REASON_ACCEPTED, accepted))
    old = next((c for c in previous if isinstance(c, Mapping) and c.get("type") == "Accepted"), None)
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == status else None
    return [{"type": "Accepted", "status": status, "reason": reason, "message": message,
             "lastTransitionTime": since or format_time(now), "observedGeneration": generation}]
