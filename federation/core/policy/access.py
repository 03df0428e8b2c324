"""`AccessPolicy`: who may open streams to a service; `MeshAccessPolicy`: the mesh-wide default. Pure.

One AccessPolicy per service (the object's namespace/name), a list of named rules, each `Allow` or `Deny`
for sources matched by site, network and SPIFFE identity. Evaluated as Istio's AuthorizationPolicy is:
any matching Deny rule denies; else, if the policy has Allow rules, one of them must match; else the
mesh default applies (allow, unless a MeshAccessPolicy says deny). A source attribute the enforcing point
cannot know (a workload identity, where only the site is known) matches a Deny rule and no Allow rule,
so an unknown identity can never widen access (Istio's rule for TCP); a workload's is in the scope of the
site that vouched for it (`workload_id`). docs/security.md has the model.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.core.codec import dump_json
from federation.core.errors import PolicyError, RecordError
from federation.core.keys import Keys
from federation.core.policy import fields as f
from federation.core.policy.model import API_VERSION
from federation.core.records import check_label

KIND = "AccessPolicy"
MESH_KIND = "MeshAccessPolicy"
SCHEMA = 1
MAX_RULES = 32
MAX_MATCHES = 64
_METADATA_IGNORED = frozenset({
    "labels", "annotations", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
    "ownerReferences", "finalizers", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds", "generateName",
})  # fmt: skip
ServiceId = tuple[str, str]


class Action(enum.StrEnum):
    """What a matching rule (or the default) does."""

    ALLOW = "Allow"
    DENY = "Deny"


@dataclass(frozen=True, slots=True)
class Source:
    """Who a rule is about: every non-empty list must match (a list matches if any entry does)."""

    sites: tuple[str, ...] = ()
    """Any site; `*` also means any."""
    networks: tuple[str, ...] = ()
    """Any network."""
    identities: tuple[str, ...] = ()
    """Any identity; SPIFFE IDs, a trailing `*` matching any rest (`spiffe://mesh.example/site/east/*`)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One named rule of a policy."""

    name: str
    """Required: what denials and `meshfed policy check` name (a DNS label, unique in the policy)."""
    action: Action
    """Required: Allow or Deny; no default, a rule must say what it does."""
    source: Source = Source()
    """Everyone: a rule with an empty `from` matches every source."""
    description: str = ""
    """For the operator; not evaluated."""


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The access rules of the service `namespace/name`."""

    namespace: str
    """The service's namespace (metadata.namespace)."""
    name: str
    """The service's name (metadata.name)."""
    rules: tuple[Rule, ...] = ()
    """No rules: the mesh default applies."""


@dataclass(frozen=True, slots=True)
class MeshAccess:
    """The mesh-wide side of access control."""

    default_action: Action = Action.ALLOW
    """Allow: a service without Allow rules is open to the mesh, as before policies (Consul's default
    `default_policy = allow` for a new cluster); Deny locks every service down to its Allow rules."""
    close_on_deny: bool = True
    """Close established streams a changed policy now denies, within a second (Consul keeps them open,
    hashicorp/consul#10763); false leaves them to finish, and only new streams are refused."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Who asks: known from a verified certificate (gateway) or from being this very site (egress)."""

    site: str
    network: str
    identity: str | None = None
    """Its gateway's SPIFFE ID, or None where it cannot be known."""
    workload: str | None = None
    """The workload's SPIFFE ID in the scope of `site` (`workload_id`), or None where unknown."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome, and what decided it."""

    allowed: bool
    rule: str
    """`<ns>/<name>:<rule>`, or `default`, or `revoked`."""
    reason: str


@dataclass(frozen=True, slots=True)
class AccessState:
    """Everything a decision reads: one immutable snapshot."""

    policies: Mapping[ServiceId, AccessPolicy] = field(default_factory=dict)
    mesh: MeshAccess = MeshAccess()
    revoked: frozenset[str] = frozenset()
    """Revoked sites: denied everything, whatever the policies say."""


def decide(state: AccessState, service: ServiceId, peer: Peer) -> Decision:
    """May `peer` open a stream to `service`? Deny rules first, then Allow rules, then the mesh default."""
    if peer.site in state.revoked:
        return Decision(False, "revoked", f"site {peer.site} is revoked by the operator")
    policy = state.policies.get(service)
    where = f"{service[0]}/{service[1]}"
    if policy is not None:
        for rule in policy.rules:
            if rule.action is Action.DENY and _matches(rule.source, peer, deny=True):
                return Decision(False, f"{where}:{rule.name}", f"denied by rule {rule.name} of {where}")
        allows = [r for r in policy.rules if r.action is Action.ALLOW]
        for rule in allows:
            if _matches(rule.source, peer, deny=False):
                return Decision(True, f"{where}:{rule.name}", f"allowed by rule {rule.name} of {where}")
        if allows:
            who = f"site {peer.site}" + (f" ({peer.workload})" if peer.workload else "")
            return Decision(False, f"{where}:no-allow-match", f"no Allow rule of {where} matches {who}")
    allowed = state.mesh.default_action is Action.ALLOW
    return Decision(allowed, "default", f"{'allowed' if allowed else 'denied'} by the mesh default "
                    f"({state.mesh.default_action.value})")


def _matches(source: Source, peer: Peer, deny: bool) -> bool:
    if source.sites and "*" not in source.sites and peer.site not in source.sites:
        return False
    if source.networks and "*" not in source.networks and peer.network not in source.networks:
        return False
    if source.identities:
        known = [i for i in (peer.identity, peer.workload) if i]
        if any(_identity(p, i) for p in source.identities for i in known):
            return True
        if peer.identity is None:
            return deny  # unknown: matches a Deny, never an Allow
        if peer.workload is None:  # the site is known, its workload is not: may it be one the rule names?
            scope = workload_scope(peer.identity, peer.site)
            return deny and any(could_name(p, scope) for p in source.identities)
        return False
    return True


def workload_id(trust_domain: str, site: str, workload: str) -> str:
    """The SPIFFE ID of workload `ns/sa` as site `site` vouches for it: `spiffe://<td>/site/<site>/ns/<ns>/sa/<sa>`."""
    ns, _, sa = workload.partition("/")
    return f"spiffe://{trust_domain}/site/{site}/ns/{ns}/sa/{sa}"


def workload_scope(identity: str, site: str) -> str:
    """Where the workload IDs of `site` begin, from any SPIFFE ID of the mesh (`identity`, e.g. its gateway's)."""
    trust_domain = identity.removeprefix("spiffe://").split("/", 1)[0]
    return f"spiffe://{trust_domain}/site/{site}/ns/"


def _identity(pattern: str, identity: str) -> bool:
    return identity.startswith(pattern[:-1]) if pattern.endswith("*") else identity == pattern


def could_name(pattern: str, scope: str) -> bool:
    """Whether `pattern` can match some workload ID that begins with `scope`."""
    stem = pattern[:-1] if pattern.endswith("*") else pattern
    return stem.startswith(scope) or (pattern.endswith("*") and scope.startswith(stem))


# ---------------------------------------------------------------- documents


def from_document(doc: Any, where: str = "") -> AccessPolicy:
    """Validate an AccessPolicy document; PolicyError names the field and the reason."""
    top = f.Section(doc, where)
    namespace, name = _header(top, KIND)
    spec = f.Section(top.take("spec", lambda p, v: v, None), top.at("spec"))
    raws: list[Any] = spec.take("rules", lambda p, v: f.items(p, v, MAX_RULES), [])
    spec.done()
    rules: list[Rule] = []
    for i, raw in enumerate(raws):
        rule = _rule(f.Section(raw, f"{spec.at('rules')}[{i}]"))
        if any(r.name == rule.name for r in rules):
            raise PolicyError(f"{spec.at('rules')}[{i}].name", f"{rule.name!r} is used twice")
        rules.append(rule)
    return AccessPolicy(namespace, name, tuple(rules))


def to_document(policy: AccessPolicy) -> dict[str, Any]:
    """The policy as a full document."""
    rules = []
    for r in policy.rules:
        src = {k: list(v) for k, v in (("sites", r.source.sites), ("networks", r.source.networks),
                                        ("identities", r.source.identities)) if v}
        rules.append({"name": r.name, "action": r.action.value, "from": src,
                      **({"description": r.description} if r.description else {})})
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"namespace": policy.namespace, "name": policy.name},
            "spec": {"rules": rules}}


def mesh_from_document(doc: Any, where: str = "") -> MeshAccess:
    """Validate a MeshAccessPolicy document (metadata.name must be `default`: there is one per mesh)."""
    top = f.Section(doc, where)
    _header(top, MESH_KIND)
    spec = f.Section(top.take("spec", lambda p, v: v, None), top.at("spec"))
    action = spec.take("defaultAction", f.choice(Action), Action.ALLOW)
    close = spec.take("closeOnDeny", f.boolean, True)
    spec.done()
    return MeshAccess(action, close)


def mesh_to_document(mesh: MeshAccess) -> dict[str, Any]:
    """The mesh access settings as a full document."""
    return {"apiVersion": API_VERSION, "kind": MESH_KIND, "metadata": {"name": "default"},
            "spec": {"defaultAction": mesh.default_action.value, "closeOnDeny": mesh.close_on_deny}}


def encode(document: Mapping[str, Any]) -> dict[str, Any]:
    """The stored record of a document (to be signed): the full document plus the registry's schema."""
    return {"schema": SCHEMA, **document}


def tombstone(namespace: str, name: str) -> dict[str, Any]:
    """The stored record that removes the policy of `namespace/name` (signed, unlike a bare delete)."""
    return {"schema": SCHEMA, "apiVersion": API_VERSION, "kind": KIND, "deleted": True,
            "metadata": {"namespace": namespace, "name": name}}


def decode(key: ServiceId, data: bytes) -> AccessPolicy | None:
    """A stored access policy of `key` (namespace, name); None for a tombstone."""
    obj = _load(data)
    if obj.pop("deleted", False) is True:
        meta = obj.get("metadata")
        if obj.get("kind") != KIND or not isinstance(meta, dict) or (meta.get("namespace"), meta.get("name")) != key:
            raise PolicyError("metadata", f"the tombstone does not name {key[0]}/{key[1]}")
        return None
    policy = from_document(obj)
    if (policy.namespace, policy.name) != key:
        raise PolicyError("metadata", f"names {policy.namespace}/{policy.name} but its key names {key[0]}/{key[1]}")
    return policy


def decode_mesh(data: bytes) -> MeshAccess:
    """The stored mesh access settings."""
    return mesh_from_document(_load(data))


def prefix(keys: Keys) -> str:
    """Where access policies are stored."""
    return keys.mesh("policies", "access") + "/"


def key_of(keys: Keys, namespace: str, name: str) -> str:
    """The key of the access policy of `namespace/name`."""
    return keys.mesh("policies", "access", namespace, name)


def mesh_key(keys: Keys) -> str:
    """The key of the mesh access settings."""
    return keys.mesh("policies", "meshaccess")


def parse_key(keys: Keys, key: str) -> ServiceId:
    """(namespace, name) of an access policy key; RecordError for any other key."""
    head = prefix(keys)
    parts = key[len(head):].split("/") if key.startswith(head) else []
    if len(parts) != 2:
        raise RecordError(f"key {key!r} does not fit the layout {head}<namespace>/<name>")
    check_label("namespace", parts[0])
    check_label("service name", parts[1])
    return parts[0], parts[1]


def canonical(document: Mapping[str, Any]) -> bytes:
    """Canonical JSON of a stored record."""
    return dump_json(dict(document))


def state_document(state: AccessState) -> dict[str, Any]:
    """An access state as JSON (what the gateway hands its worker processes)."""
    return {"policies": [to_document(p) for _, p in sorted(state.policies.items())],
            "mesh": mesh_to_document(state.mesh), "revoked": sorted(state.revoked)}


def state_from_document(doc: Mapping[str, Any]) -> AccessState:
    """The access state `state_document` wrote."""
    policies = [from_document(p) for p in doc.get("policies", ())]
    return AccessState({(p.namespace, p.name): p for p in policies}, mesh_from_document(doc["mesh"]),
                       frozenset(doc.get("revoked", ())))


# ---------------------------------------------------------------- private


def _header(top: f.Section, kind: str) -> tuple[str, str]:
    api = top.require("apiVersion", lambda p, v: v)
    if api != API_VERSION:
        raise PolicyError(top.at("apiVersion"), f"{api!r} is not {API_VERSION}")
    got = top.require("kind", lambda p, v: v)
    if got != kind:
        raise PolicyError(top.at("kind"), f"{got!r} is not {kind}")
    meta = f.Section(top.require("metadata", lambda p, v: v), top.at("metadata"))
    if kind == MESH_KIND:
        name = meta.require("name", lambda p, v: v)
        if name != "default":
            raise PolicyError(meta.at("name"), f"{name!r}: the one MeshAccessPolicy of a mesh is named default")
        namespace = meta.take("namespace", lambda p, v: "", "")
    else:
        namespace = meta.require("namespace", _label("namespace"))
        name = meta.require("name", _label("service name"))
    for k in _METADATA_IGNORED:
        meta.take(k, lambda p, v: v, None)
    meta.done()
    top.take("status", lambda p, v: v, None)
    top.take("spec", lambda p, v: v, None)
    top.done()
    return namespace, name


def _rule(s: f.Section) -> Rule:
    name = s.require("name", _label("rule name"))
    action = s.require("action", f.choice(Action))
    description = s.take("description", _text, "")
    src = f.Section(s.take("from", lambda p, v: v, None), s.at("from"))
    none: tuple[str, ...] = ()
    sites = src.take("sites", _names("site"), none)
    networks = src.take("networks", _names("network"), none)
    identities = src.take("identities", _identities, none)
    src.done()
    s.done()
    return Rule(name, action, Source(sites, networks, identities), description)


def _names(what: str) -> Any:
    def parse(path: str, value: Any) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(f.items(path, value, MAX_MATCHES)):
            if item != "*":
                def check(item: Any = item) -> None:
                    check_label(what, item)
                f.recheck(f"{path}[{i}]", check)
            out.append(str(item))
        return tuple(out)

    return parse


def _identities(path: str, value: Any) -> tuple[str, ...]:
    items = f.items(path, value, MAX_MATCHES)
    for i, item in enumerate(items):  # printable ASCII without a space: no newline or NUL reaches a log or a match
        if (not isinstance(item, str) or not item.startswith("spiffe://") or len(item) > 2048 or "*" in item[:-1]
                or not (item.isascii() and item.isprintable()) or " " in item):
            raise PolicyError(f"{path}[{i}]", f"{item!r} is not a SPIFFE ID (a trailing * matches any rest)")
    return tuple(items)


def _text(path: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 1024:
        raise PolicyError(path, "must be text of at most 1024 characters")
    return value


def _label(what: str) -> Any:
    def parse(path: str, value: Any) -> str:
        f.recheck(path, lambda: check_label(what, value))
        return str(value)

    return parse


def _load(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError("", f"value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PolicyError("", "value is not a JSON object")
    if obj.pop("schema", None) != SCHEMA:
        raise PolicyError("schema", f"is not {SCHEMA} (this agent reads {SCHEMA})")
    return obj
