"""ServiceExport status conditions as the MCS API defines them (sigs.k8s.io/mcs-api v1beta1). Pure.

`Valid`, `Ready` and `Conflict`, with the reasons that project defines; several conflict reasons are
joined by commas, as its ServiceExportConditionConflict documentation allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from federation.core.view import Conflict

Obj = Mapping[str, Any]

# Reasons as in sigs.k8s.io/mcs-api (ServiceExportReason*).
REASON_VALID = "Valid"
REASON_NO_SERVICE = "NoService"
REASON_INVALID_TYPE = "InvalidServiceType"
REASON_INVALID = "InvalidService"
REASON_NO_CONFLICTS = "NoConflicts"
REASON_TYPE_CONFLICT = "TypeConflict"
REASON_PORT_CONFLICT = "PortConflict"
REASON_PENDING = "Pending"
REASON_EXPORTED = "Exported"
REASON_FAILED = "Failed"
REASON_INVALID_EXPORT = "InvalidServiceExport"
CONFLICT_REASONS = {
    "type": "TypeConflict", "ports": "PortConflict", "sessionAffinity": "SessionAffinityConflict",
    "sessionAffinityConfig": "SessionAffinityConfigConflict", "internalTrafficPolicy": "InternalTrafficPolicyConflict",
    "trafficDistribution": "TrafficDistributionConflict", "ipFamilies": "IPFamilyConflict",
    "labels": "LabelsConflict", "annotations": "AnnotationsConflict",
}
"""Conflict kinds of the mesh view -> the MCS reasons (ServiceExportReason*Conflict)."""


@dataclass(frozen=True, slots=True)
class MeshState:
    """What the mesh view says about one ServiceExport of this site."""

    synced: bool = False
    """The mesh registry has been read once: before that, nothing about other sites is known."""
    exported: bool = False
    """This site's export of the service is in the registry (other sites can import it)."""
    conflict: Conflict | None = None


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a ServiceExport cannot be exported: an MCS reason and a message for the operator."""

    reason: str
    message: str



def format_time(now: float) -> str:
    """Unix time as the API writes it."""
    return datetime.fromtimestamp(int(now), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def export_conditions(
    previous: Sequence[Obj],
    invalid: Invalid | None,
    mesh: MeshState,
    now: float,
    generation: int = 0,
) -> list[dict[str, Any]]:
    """The `Valid`, `Ready` and `Conflict` conditions of one ServiceExport.

    Until this site's export is in the registry, Ready and Conflict are Unknown (Pending) rather than
    a guess. lastTransitionTime is kept from `previous` while a condition's status does not change.
    """
    pending = ("Unknown", REASON_PENDING, "waiting for the export to reach the mesh registry")
    if invalid is not None:
        valid = ("False", invalid.reason, invalid.message)
        ready = ("False", REASON_FAILED, f"the service is not exported: {invalid.message}")
        conf = ("Unknown", REASON_PENDING, "the service is not exported, so no conflict is checked")
    else:
        valid = ("True", REASON_VALID, "the service is exported to the mesh")
        if not (mesh.synced and mesh.exported):
            ready = conf = pending
        else:
            ready = ("True", REASON_EXPORTED, "the service is in the mesh registry, where other sites import it")
            if mesh.conflict is None:
                conf = ("False", REASON_NO_CONFLICTS, "the service agrees with every other site's export")
            else:
                kinds = mesh.conflict.kinds or (mesh.conflict.kind,)
                reason = ",".join(dict.fromkeys(CONFLICT_REASONS.get(k, "Conflict") for k in kinds))
                conf = ("True", reason, mesh.conflict.reason)
    before = {str(c.get("type")): c for c in _l(previous) if isinstance(c, Mapping)}
    out = []
    for ctype, (status, reason, message) in (("Valid", valid), ("Ready", ready), ("Conflict", conf)):
        old = before.get(ctype)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        out.append({
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message[:32768],
            "lastTransitionTime": since or format_time(now),
            "observedGeneration": generation,
        })  # fmt: skip
    return out


def same_conditions(a: Sequence[Obj], b: Sequence[Obj]) -> bool:
    """True if two condition lists say the same (times aside)."""

    def norm(cs: Sequence[Obj]) -> list[tuple[Any, ...]]:
        fields = ("type", "status", "reason", "message")
        return sorted(tuple(str(c.get(f)) for f in fields) for c in _l(cs) if isinstance(c, Mapping))

    return norm(a) == norm(b)


def _l(value: Any) -> Sequence[Any]:
    """`value` if it is a list, else an empty one."""
    return value if isinstance(value, list | tuple) else ()
