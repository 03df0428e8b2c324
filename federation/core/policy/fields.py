"""The pieces every TrafficPolicy section reader uses: a mapping that refuses unknown fields, and value parsers
that raise PolicyError naming the field (`spec.retries.attempts: 0 is not in 1..10`). Pure."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from federation.core.errors import PolicyError, RecordError
from federation.core.policy.units import MAX_DURATION, parse_duration, parse_percent
from federation.core.records import check_label, check_label_key, check_label_value, labels_of

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
MAX_LIST = 32
"""Entries in any list of a policy: far more than a real policy needs, bounded because etcd holds them."""


class Section:
    """A mapping being read at `path`; `done()` refuses what nobody took."""

    def __init__(self, value: Any, path: str) -> None:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise PolicyError(path, f"must be a mapping, not {type(value).__name__}")
        self.value, self.path, self._taken = value, path, set[str]()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.value

    def take(self, key: str, parse: Callable[[str, Any], T], default: T) -> T:
        self._taken.add(key)
        return parse(self.at(key), self.value[key]) if key in self.value else default

    def require(self, key: str, parse: Callable[[str, Any], T]) -> T:
        self._taken.add(key)
        if key not in self.value:
            raise PolicyError(self.at(key), "is required")
        return parse(self.at(key), self.value[key])

    def done(self) -> None:
        for key in self.value:
            if key not in self._taken:
                known = ", ".join(sorted(self._taken))
                raise PolicyError(self.at(str(key)), f"unknown field (known here: {known})")


# ---------------------------------------------------------------- value parsers


def integer(lo: int, hi: int) -> Callable[[str, Any], int]:
    def parse(path: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(path, f"{value!r} is not a whole number")
        if not lo <= value <= hi:
            raise PolicyError(path, f"{value} is not in {lo}..{hi}")
        return value

    return parse


def duration(lo: float, hi: float = MAX_DURATION) -> Callable[[str, Any], float]:
    return lambda path, value: parse_duration(path, value, lo, hi)


def percent(lo: float = 0.0, hi: float = 100.0) -> Callable[[str, Any], float]:
    return lambda path, value: parse_percent(path, value, lo, hi)


def boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(path, f"{value!r} is not true or false")
    return value


def choice(kind: type[E]) -> Callable[[str, Any], E]:
    def parse(path: str, value: Any) -> E:
        for member in kind:
            if member.value == value:
                return member
        raise PolicyError(path, f"{value!r} is not one of {', '.join(str(x.value) for x in kind)}")

    return parse


def items(path: str, value: Any, limit: int = MAX_LIST) -> list[Any]:
    if not isinstance(value, list):
        raise PolicyError(path, f"must be a list, not {type(value).__name__}")
    if len(value) > limit:
        raise PolicyError(path, f"has {len(value)} entries; at most {limit} are allowed")
    return value


def site_name(path: str, value: Any) -> str:
    recheck(path, lambda: check_label("site", value))
    return str(value)


def topology_value(path: str, value: Any) -> str:
    """A region or zone name: a non-empty label value, as Kubernetes topology labels are."""
    if value == "":
        raise PolicyError(path, "must not be empty")
    recheck(path, lambda: check_label_value("", value))
    return str(value)


def label_map(path: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping) or not value:
        raise PolicyError(path, "must be a non-empty mapping of label keys to values")
    for k, v in value.items():
        label_pair(f"{path}.{k}", k, v)
    return labels_of({str(k): str(v) for k, v in value.items()})


def limit(path: str, value: Any) -> int | None:
    if value is None:
        return None
    if value == 0 and not isinstance(value, bool):
        raise PolicyError(path, "0 would refuse every connection; leave the field out (or null) for no limit")
    return integer(1, 1_000_000)(path, value)


def label_pair(path: str, key: Any, value: Any) -> None:
    """Raise PolicyError unless key and value make a Kubernetes label."""
    try:
        check_label_key("", key)
        check_label_value("", value)
    except RecordError as exc:
        raise PolicyError(path, str(exc).lstrip(" ")) from None


def recheck(path: str, check: Callable[[], object]) -> None:
    try:
        check()
    except RecordError as exc:
        raise PolicyError(path, str(exc).lstrip(" ")) from None


def optional(parse: Callable[[str, Any], float]) -> Callable[[str, Any], float | None]:
    return lambda path, value: None if value is None else parse(path, value)


def nonzero(parse: Callable[[str, Any], float]) -> Callable[[str, Any], float]:
    def check(path: str, value: Any) -> float:
        out = parse(path, value)
        if out == 0:
            raise PolicyError(path, "0 would keep dead connections forever; give a duration (e.g. 24h)")
        return out

    return check
