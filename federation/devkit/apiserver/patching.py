"""The three patch formats kubectl sends: JSON merge patch, JSON patch, and strategic merge patch. Pure.

Strategic merge patch follows k8s.io/apimachinery's strategicpatch for the lists the served built-in
types declare with a merge key (Service ports by port, conditions by type, owner references by uid,
finalizers as a set) and its directives (`$patch`, `$retainKeys`, `$setElementOrder/<list>`,
`$deleteFromPrimitiveList/<list>`); every other list is replaced, as in the Go types.
"""

from __future__ import annotations

import copy
from typing import Any

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"

_MERGE_KEYS: dict[tuple[str, ...], str | None] = {
    ("metadata", "ownerReferences"): "uid",
    ("metadata", "finalizers"): None,
    ("spec", "finalizers"): None,
    ("spec", "ports"): "port",
    ("status", "conditions"): "type",
    ("status", "loadBalancer", "ingress"): None,
}
"""List path -> merge key (None: a list of scalars merged as a set); the patchMergeKey tags of the Go types."""


class PatchError(ValueError):
    """A patch that cannot be applied; the message is what the API server answers."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch is a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation: {op!r}")
        kind = op["op"]
        if kind in ("move", "copy"):
            value = copy.deepcopy(_get(doc, op.get("from", "")))
            if kind == "move":
                doc = _remove(doc, op["from"])
            doc = _add(doc, op["path"], value)
        elif kind == "test":
            if _get(doc, op["path"]) != op.get("value"):
                raise PatchError(f"test operation failed at {op['path']}")
        elif kind == "remove":
            doc = _remove(doc, op["path"])
        elif kind in ("add", "replace"):
            if kind == "replace":
                _get(doc, op["path"])
                doc = _remove(doc, op["path"])
            doc = _add(doc, op["path"], copy.deepcopy(op.get("value")))
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return doc


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch of a built-in object."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch is a JSON object")
    return _smp_map(copy.deepcopy(target) if isinstance(target, dict) else {}, patch, ())


# ---------------------------------------------------------------- strategic merge patch


def _smp_map(target: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...]) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    retain = patch.get("$retainKeys")
    orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
    for k, v in patch.items():
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            if isinstance(target.get(name), list) and isinstance(v, list):
                target[name] = [x for x in target[name] if x not in v]
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        sub = (*path, k)
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict):
            merged = _smp_map(target[k] if isinstance(target.get(k), dict) else {}, v, sub)
            if merged is None:
                target.pop(k, None)
            else:
                target[k] = merged
        elif isinstance(v, list) and _strip(sub) in _MERGE_KEYS:
            have = target.get(k)
            target[k] = _smp_list(have if isinstance(have, list) else [], v, _MERGE_KEYS[_strip(sub)])
        else:
            target[k] = copy.deepcopy(v)
    for name, order in orders.items():
        if isinstance(target.get(name), list) and isinstance(order, list):
            target[name] = _ordered(target[name], order, _MERGE_KEYS.get(_strip((*path, name))))
    if isinstance(retain, list):
        for k in list(target):
            if k not in retain:
                del target[k]
    return target


def _smp_list(target: list[Any], patch: list[Any], key: str | None) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    out = copy.deepcopy(target)
    if key is None:
        for p in patch:
            if p not in out:
                out.append(copy.deepcopy(p))
        return out
    for p in patch:
        if not isinstance(p, dict) or key not in p:
            raise PatchError(f"map: {p!r} does not contain declared merge key: {key}")
        i = next((j for j, t in enumerate(out) if isinstance(t, dict) and t.get(key) == p[key]), None)
        if p.get("$patch") == "delete":
            if i is not None:
                del out[i]
        elif i is None:
            out.append({k: copy.deepcopy(v) for k, v in p.items() if k != "$patch"})
        else:
            out[i] = _smp_map(out[i], p, ())
    return out


def _ordered(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(x: Any) -> Any:
        return x.get(key) if key is not None and isinstance(x, dict) else x

    wanted = [ident(o) for o in order]
    rank = {repr(w): n for n, w in enumerate(wanted)}
    return sorted(items, key=lambda x: rank.get(repr(ident(x)), len(rank)))


def _strip(path: tuple[str, ...]) -> tuple[str, ...]:
    return path[-3:] if path[-3:] in _MERGE_KEYS else path[-2:]


# ---------------------------------------------------------------- JSON pointers (RFC 6901)


def _parts(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def _get(doc: Any, pointer: str) -> Any:
    for part in _parts(pointer):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise PatchError(f"path {pointer!r} does not exist")
    return doc


def _add(doc: Any, pointer: str, value: Any) -> Any:
    parts = _parts(pointer)
    if not parts:
        return value
    parent = _get(doc, "".join(f"/{p.replace('~', '~0').replace('/', '~1')}" for p in parts[:-1]))
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"index {last!r} is out of range at {pointer!r}")
    else:
        raise PatchError(f"cannot add at {pointer!r}")
    return doc


def _remove(doc: Any, pointer: str) -> Any:
    parts = _parts(pointer)
    if not parts:
        return None
    parent = _get(doc, "".join(f"/{p.replace('~', '~0').replace('/', '~1')}" for p in parts[:-1]))
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise PatchError(f"path {pointer!r} does not exist")
    return doc
