"""Label and field selectors as list and watch requests carry them (`-l app=web`, `--field-selector`). Pure."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Matcher = Callable[[Mapping[str, Any]], bool]

_REQUIREMENT = re.compile(
    r"\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
    r"(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[-A-Za-z0-9_.]*))?\s*"
)
FIELDS = ("metadata.name", "metadata.namespace")
"""The fields every resource can be selected by (the only ones kubectl itself uses)."""


class SelectorError(ValueError):
    """A selector that does not parse; the message is what the API server answers (400)."""


def label_selector(text: str) -> Matcher:
    """A matcher of objects by their labels; SelectorError if `text` is not a selector."""
    tests = [_label_test(part) for part in _split(text)]
    return lambda obj: all(t(_labels(obj)) for t in tests)


def field_selector(text: str) -> Matcher:
    """A matcher of objects by metadata.name / metadata.namespace (`=`, `==`, `!=`)."""
    tests: list[Callable[[Mapping[str, Any]], bool]] = []
    for part in _split(text):
        m = re.fullmatch(r"\s*([\w.]+)\s*(==|!=|=)\s*(.*?)\s*", part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        name, op, value = m.groups()
        if name not in FIELDS:
            raise SelectorError(f'field label not supported: {name}')
        attr = name.split(".", 1)[1]

        def test(obj: Mapping[str, Any], attr: str = attr, op: str = op, value: str = value) -> bool:
            have = str((obj.get("metadata") or {}).get(attr, ""))
            return (have == value) != (op == "!=")

        tests.append(test)
    return lambda obj: all(t(obj) for t in tests)


def _split(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


def _label_test(part: str) -> Callable[[Mapping[str, str]], bool]:
    m = _REQUIREMENT.fullmatch(part)
    if not m:
        raise SelectorError(f"unable to parse requirement: {part!r}")
    key, op, value, neg = m.group("key"), (m.group("op") or "").strip(), m.group("value"), m.group("neg")
    if neg:
        if op:
            raise SelectorError(f"unable to parse requirement: {part!r}")
        return lambda labels: key not in labels
    if not op:
        return lambda labels: key in labels
    if op in ("in", "notin"):
        if not (value or "").startswith("("):
            raise SelectorError(f"unable to parse requirement: {part!r}: values must be in parentheses")
        values = {v.strip() for v in value[1:-1].split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if op == "!=":
        return lambda labels: labels.get(key) != value
    return lambda labels: labels.get(key) == value


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = (obj.get("metadata") or {}).get("labels")
    return labels if isinstance(labels, Mapping) else {}
