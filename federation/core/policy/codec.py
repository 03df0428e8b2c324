"""TrafficPolicy documents (Kubernetes-shaped YAML, CRD objects) and stored records (canonical JSON). Pure.

`from_document` validates an operator's document and fills in every default; `to_document` writes the
policy back in full, so what is stored is exactly what is enforced by every agent, whatever its version's
defaults. Per-port entries are stored as their difference from the service's rules and merged back on read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from federation.core.codec import dump_json
from federation.core.errors import PolicyError, RecordError
from federation.core.keys import Keys
from federation.core.policy import fields as f
from federation.core.policy import model as m
from federation.core.policy import sections as s
from federation.core.records import check_label

SCHEMA = 1
"""Version of the stored JSON layout (beside apiVersion, which versions the document's meaning)."""

_RULES: dict[str, tuple[str, Callable[[Any, str], Any], Callable[[Any], Any]]] = {
    "locality": ("locality", s.read_locality, s.write_locality),
    "outlierDetection": ("outlier_detection", s.read_outlier, s.write_outlier),
    "activeHealth": ("active_health", s.read_active_health, s.write_active_health),
    "split": ("split", s.read_split, s.write_split),
    "timeouts": ("timeouts", s.read_timeouts, s.write_timeouts),
    "retries": ("retries", s.read_retries, s.write_retries),
    "circuitBreaker": ("circuit_breaker", s.read_circuit_breaker, s.write_circuit_breaker),
    "faults": ("faults", s.read_faults, s.write_faults),
}
"""spec field -> (Rules attribute, reader, writer), for the sections that may differ per port."""
_SERVICE_ONLY = ("ports", "partition", "ingress")
_METADATA_IGNORED = frozenset({
    "labels", "annotations", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
    "ownerReferences", "finalizers", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds", "generateName",
})  # fmt: skip
"""Kubernetes ObjectMeta fields a CRD object or a `kubectl get -o yaml` file carries; accepted, not stored."""
MAX_PORTS = 64


def from_document(doc: Any, where: str = "") -> m.TrafficPolicy:
    """Validate a TrafficPolicy document (parsed YAML or JSON); PolicyError names the field and the reason."""
    top = f.Section(doc, where)
    at = top.at
    api = top.require("apiVersion", lambda p, v: v)
    if api != m.API_VERSION:
        raise PolicyError(at("apiVersion"), f"{api!r} is not {m.API_VERSION}")
    kind = top.require("kind", lambda p, v: v)
    if kind != m.KIND:
        raise PolicyError(at("kind"), f"{kind!r} is not {m.KIND}")
    meta = f.Section(top.require("metadata", lambda p, v: v), at("metadata"))
    namespace = meta.require("namespace", _label("namespace"))
    name = meta.require("name", _label("service name"))
    for key in _METADATA_IGNORED:
        meta.take(key, lambda p, v: v, None)
    meta.done()
    spec_raw = top.take("spec", lambda p, v: v, None)
    top.take("status", lambda p, v: v, None)  # a CRD object's status is the agents' to write, never policy
    top.done()
    spec = f.Section(spec_raw, at("spec"))
    rules_raw = {k: v for k, v in spec.value.items() if k not in _SERVICE_ONLY}
    rules = _rules(spec, rules_raw)
    ports = _ports(spec, rules_raw)
    partition = spec.take("partition", lambda p, v: s.read_partition(v, p), m.Partition())
    ingress = spec.take("ingress", lambda p, v: v, None)
    if ingress:
        raise PolicyError(spec.at("ingress"), "global ingress is configured on the site that hosts it (the agent "
                          "config's ingress: list, docs/traffic.md), not in a policy; leave it out")
    spec.done()
    return m.TrafficPolicy(namespace, name, rules, ports, partition)


def to_document(policy: m.TrafficPolicy) -> dict[str, Any]:
    """The policy as a full Kubernetes-shaped document: every default written out."""
    base = rules_to_spec(policy.rules)
    spec: dict[str, Any] = dict(base)
    if policy.ports:
        spec["ports"] = [{"port": p.port, **difference(rules_to_spec(p.rules), base)} for p in policy.ports]
    spec["partition"] = s.write_partition(policy.partition)
    return {
        "apiVersion": m.API_VERSION,
        "kind": m.KIND,
        "metadata": {"namespace": policy.namespace, "name": policy.name},
        "spec": spec,
    }


def rules_to_spec(rules: m.Rules) -> dict[str, Any]:
    """The per-port sections of a spec, in full."""
    return {field: write(getattr(rules, attr)) for field, (attr, _read, write) in _RULES.items()}


def encode_policy(policy: m.TrafficPolicy) -> bytes:
    """The stored record: canonical JSON of the full document plus the registry's schema version."""
    return dump_json({"schema": SCHEMA, **to_document(policy)})


def decode_policy(key: tuple[str, str], data: bytes) -> m.TrafficPolicy:
    """Validate and decode a stored policy whose key names the service `key` (namespace, name)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError("", f"value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PolicyError("", "value is not a JSON object")
    if obj.pop("schema", None) != SCHEMA:
        raise PolicyError("schema", f"is not {SCHEMA} (this agent reads {SCHEMA})")
    policy = from_document(obj)
    if (policy.namespace, policy.name) != key:
        raise PolicyError("metadata", f"names {policy.namespace}/{policy.name} but its key names {key[0]}/{key[1]}")
    return policy


def policy_prefix(keys: Keys) -> str:
    """Where every traffic policy is stored."""
    return keys.mesh("policies", "traffic") + "/"


def policy_key(keys: Keys, namespace: str, name: str) -> str:
    """The key of the traffic policy of `namespace/name`."""
    return keys.mesh("policies", "traffic", namespace, name)


def parse_policy_key(keys: Keys, key: str) -> tuple[str, str]:
    """(namespace, name) from a policy key; RecordError for a key that does not fit the layout."""
    prefix = policy_prefix(keys)
    parts = key[len(prefix):].split("/") if key.startswith(prefix) else []
    if len(parts) != 2:
        raise RecordError(f"key {key!r} does not fit the layout {prefix}<namespace>/<name>")
    check_label("namespace", parts[0])
    check_label("service name", parts[1])
    return parts[0], parts[1]


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: mappings merge field by field, anything else (lists, values, null) replaces."""
    out = dict(base)
    for k, v in over.items():
        b = out.get(k)
        out[k] = merge(b, v) if isinstance(b, Mapping) and isinstance(v, Mapping) else v
    return out


def difference(full: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest mapping that `merge(base, it) == full` (for mappings with the same fields)."""
    out: dict[str, Any] = {}
    for k, v in full.items():
        b = base.get(k)
        if isinstance(v, Mapping) and isinstance(b, Mapping):
            sub = difference(v, b)
            if sub:
                out[k] = sub
        elif k not in base or v != b:
            out[k] = v
    return out


# ---------------------------------------------------------------- private


def _rules(spec: f.Section, raw: Mapping[str, Any], path: str | None = None) -> m.Rules:
    """Rules from the per-port sections in `raw` (at `path`, default: the spec), defaults for the rest."""
    values: dict[str, Any] = {}
    for field, (attr, read, _write) in _RULES.items():
        if path is None:
            values[attr] = spec.take(field, _at(read), getattr(m.Rules(), attr))
        elif field in raw:
            values[attr] = read(raw[field], f"{path}.{field}")
    return m.Rules(**values)


def _ports(spec: f.Section, rules_raw: Mapping[str, Any]) -> tuple[m.PortRules, ...]:
    out: list[m.PortRules] = []
    raws: list[Any] = spec.take("ports", lambda p, v: f.items(p, v, MAX_PORTS), [])
    for i, raw in enumerate(raws):
        entry = f.Section(raw, f"{spec.at('ports')}[{i}]")
        port = entry.require("port", _port)
        if any(p.port == port for p in out):
            raise PolicyError(entry.at("port"), f"{port!r} has an entry already")
        for key in entry.value:
            if key != "port" and key not in _RULES:
                where = "is set for the whole service only" if key in _SERVICE_ONLY else "is an unknown field"
                raise PolicyError(entry.at(str(key)), f"{where} (per port: {', '.join(_RULES)})")
        merged = merge(rules_raw, {k: v for k, v in entry.value.items() if k != "port"})
        out.append(m.PortRules(port, _rules(entry, merged, entry.path)))
    return tuple(out)


def _at(read: Callable[[Any, str], Any]) -> Callable[[str, Any], Any]:
    return lambda path, value: read(value, path)


def _port(path: str, value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        return f.integer(1, 65535)(path, value)
    if isinstance(value, str) and len(value) <= 15:
        try:
            check_label("port", value)
            return value
        except RecordError:
            pass
    raise PolicyError(path, f"{value!r} is neither a port name (DNS label of at most 15 chars) nor a number")


def _label(what: str) -> Callable[[str, Any], str]:
    def parse(path: str, value: Any) -> str:
        try:
            check_label(what, value)
        except RecordError as exc:
            raise PolicyError(path, str(exc)) from None
        return str(value)

    return parse
