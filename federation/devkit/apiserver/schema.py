"""Structural schemas of custom resources, applied as the API server does: defaults, pruning, validation.

Pure. `prune(obj, schema)` drops every field the schema does not declare (Kubernetes "structural
pruning", which silently loses whatever an agent writes that its CRD lacks) and returns the paths it
dropped; `validate(obj, schema)` returns the field errors a real API server would answer 422 with.
The agent's tests use both to prove that what it writes survives deploy/kubernetes/crds.yaml.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

Schema = Mapping[str, Any]

_ROOT_KEEP = ("apiVersion", "kind", "metadata")
_PRESERVE = "x-kubernetes-preserve-unknown-fields"
_INT32 = (-(2**31), 2**31 - 1)


def prune(obj: Any, schema: Schema) -> tuple[Any, list[str]]:
    """A copy of the custom resource `obj` with the fields its schema does not declare removed, and their paths."""
    dropped: list[str] = []
    out = copy.deepcopy(obj)
    if isinstance(out, dict):
        for key in list(out):
            if key not in _ROOT_KEEP:  # the API server keeps these whatever the schema says
                _prune_field(out, key, schema, key, dropped)
    return out, dropped


def defaults(obj: Any, schema: Schema) -> Any:
    """`obj` with the schema's `default` values filled in where a field is absent (in place; returned)."""
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                defaults(obj[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key in obj:
                defaults(obj[key], extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        for item in obj:
            defaults(item, schema["items"])
    return obj


def validate(obj: Any, schema: Schema, path: str = "") -> list[str]:
    """Field errors of `obj` against `schema`, worded as the API server words them."""
    errors: list[str] = []
    _check(obj, schema, path, errors, root=True)
    return errors


# ---------------------------------------------------------------- pruning


def _prune_field(parent: dict[str, Any], key: str, schema: Schema, path: str, dropped: list[str]) -> None:
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    if props is not None and key in props:
        _prune_value(parent[key], props[key], path, dropped)
    elif isinstance(extra, Mapping):
        _prune_value(parent[key], extra, path, dropped)
    elif extra is True or schema.get(_PRESERVE):
        return
    else:
        dropped.append(path)
        del parent[key]


def _prune_value(value: Any, schema: Schema, path: str, dropped: list[str]) -> None:
    if schema.get("x-kubernetes-embedded-resource") and isinstance(value, dict):
        for key in list(value):
            if key not in _ROOT_KEEP:
                _prune_field(value, key, schema, f"{path}.{key}", dropped)
    elif isinstance(value, dict) and (schema.get("properties") is not None or "additionalProperties" in schema
                                      or not schema.get(_PRESERVE)):
        for key in list(value):
            _prune_field(value, key, schema, f"{path}.{key}", dropped)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            _prune_value(item, schema["items"], f"{path}[{i}]", dropped)


# ---------------------------------------------------------------- validation


def _check(value: Any, schema: Schema, path: str, errors: list[str], root: bool = False) -> None:
    where = path or "<root>"
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{where}: Invalid value: \"null\": {where} in body must be of type {schema.get('type')}")
        return
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            errors.append(f"{where}: Invalid value: must be an integer or a string")
        return
    if kind and not _is_type(value, kind):
        errors.append(f"{where}: Invalid value: \"{_kind_of(value)}\": {where} in body must be of type {kind}: "
                      f"\"{_kind_of(value)}\"")
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{e}"' for e in schema["enum"])
        errors.append(f"{where}: Unsupported value: {value!r}: supported values: {allowed}")
    if isinstance(value, str):
        _check_string(value, schema, where, errors)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(value, schema, where, errors)
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: Invalid value: {len(value)}: must have at least {schema['minItems']} items")
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                _check(item, items, f"{path}[{i}]", errors)
        _check_list_type(value, schema, where, errors)
    elif isinstance(value, dict):
        for req in schema.get("required") or ():
            if req not in value:
                errors.append(f"{path + '.' if path else ''}{req}: Required value")
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if root and key in _ROOT_KEEP:
                continue
            child = f"{path}.{key}" if path else key
            if key in props:
                _check(sub, props[key], child, errors)
            elif isinstance(extra, Mapping):
                _check(sub, extra, child, errors)


def _check_string(value: str, schema: Schema, where: str, errors: list[str]) -> None:
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{where}: Too long: may not be longer than {schema['maxLength']}")
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{where}: Invalid value: {value!r}: {where} in body should be at least "
                      f"{schema['minLength']} chars long")
    if "pattern" in schema and not re.search(_go_pattern(schema["pattern"]), value):
        errors.append(f"{where}: Invalid value: {value!r}: {where} in body should match '{schema['pattern']}'")
    if schema.get("format") == "date-time":
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            errors.append(f"{where}: Invalid value: {value!r}: {where} in body must be of type date-time")


def _check_number(value: float, schema: Schema, where: str, errors: list[str]) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: Invalid value: {value}: {where} in body should be greater than or equal to "
                      f"{schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{where}: Invalid value: {value}: {where} in body should be less than or equal to "
                      f"{schema['maximum']}")
    if schema.get("format") == "int32" and not _INT32[0] <= value <= _INT32[1]:
        errors.append(f"{where}: Invalid value: {value}: {where} in body must be a 32-bit integer")


def _check_list_type(value: list[Any], schema: Schema, where: str, errors: list[str]) -> None:
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[tuple[Any, ...]] = set()
        for i, item in enumerate(value):
            k = tuple(item.get(key) for key in keys) if isinstance(item, dict) else (item,)
            if k in seen:
                errors.append(f"{where}[{i}]: Duplicate value: {dict(zip(keys, k, strict=True))}")
            seen.add(k)
    elif list_type == "set":
        seen_items: list[Any] = []
        for i, item in enumerate(value):
            if item in seen_items:
                errors.append(f"{where}[{i}]: Duplicate value: {item!r}")
            seen_items.append(item)


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return True


def _kind_of(value: Any) -> str:
    for kind in ("boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, kind):
            return kind
    return "null"


def _go_pattern(pattern: str) -> str:
    """`pattern` with Go's meaning of `$` (the end of the text, as the real apiserver has it), not Python's
    (which also matches before a trailing newline, so "abc\\n" would pass `^[a-z]+$`)."""
    return re.sub(r"(?<!\\)\$", r"\\Z", pattern)
