"""One way to read configuration: a mapping into a frozen settings dataclass, checked field by field.

Every subsystem declares its settings as a frozen dataclass whose fields carry their type, default
and a one-line docstring (STYLE.md 3); bounds and checks ride on the field (`setting(...)`), checks
between fields in a `validate()` method. `read(cls, data, "dns")` then refuses unknown keys
everywhere, converts and checks each value, and raises `ConfigError("dns.ttl: -1 is not in 0..86400")`:
the field's full path and the reason. The agent's loader adds the file name. Pure: no IO.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from federation.core.errors import ConfigError

T = TypeVar("T")

Check = Callable[[Any], "str | None"]
"""A check of a converted value: None when fine, else the reason (e.g. "'x' is not an IP address")."""
Parse = Callable[[Any, str], Any]
"""A converter of its own for a field of unusual shape: (raw value, "where.field") -> value; raises ConfigError."""

_META = "meshfed.setting"


@dataclass(frozen=True, slots=True)
class Spec:
    """What `read` checks for one field beyond its type."""

    lo: float | None = None
    hi: float | None = None
    positive: bool = False
    nonempty: bool = False
    check: Check | None = None
    parse: Parse | None = None


class Invalid(Exception):
    """Raised by a settings class's `validate()`: the field (relative to the section) and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def setting(default: T, *, lo: float | None = None, hi: float | None = None, positive: bool = False,
            nonempty: bool = False, check: Check | None = None, parse: Parse | None = None) -> T:
    """A settings field with a default and what `read` checks (bounds, a check, or a parser of its own)."""
    spec = Spec(lo, hi, positive, nonempty, check, parse)
    field: T = dataclasses.field(default=default, metadata={_META: spec})
    return field


def required(*, check: Check | None = None, parse: Parse | None = None, nonempty: bool = False,
             lo: float | None = None, hi: float | None = None) -> Any:
    """A settings field without a default: leaving it out is an error."""
    return dataclasses.field(metadata={_META: Spec(lo, hi, False, nonempty, check, parse)})


def read(cls: type[T], data: Any, where: str) -> T:
    """`cls` built from the `where:` mapping (None or missing: every default); ConfigError on the first problem."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a mapping, not {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise ConfigError(f"{_at(where, str(key))}: unknown field (known: {', '.join(sorted(fields))})")
        values[name] = convert(hints[name], raw, _at(where, str(key)), fields[name].metadata.get(_META, Spec()))
    for name, f in fields.items():
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_at(where, name)}: is required")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except Invalid as exc:
            raise ConfigError(f"{_at(where, exc.field)}: {exc.reason}") from None
    return obj


def convert(hint: Any, raw: Any, where: str, spec: Spec = Spec()) -> Any:
    """One value converted to the type `hint` and checked against `spec`."""
    if spec.parse is not None:
        return spec.parse(raw, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(inner[0], raw, where, spec)
    if origin is tuple:
        items = [raw] if isinstance(raw, str | Mapping) else raw
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: must be a list, not {_kind(raw)}")
        if spec.nonempty and not items:
            raise ConfigError(f"{where}: must not be empty")
        out = tuple(convert(args[0], item, f"{where}[{i}]", Spec(check=spec.check)) for i, item in enumerate(items))
        return out
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: must be a mapping, not {_kind(raw)}")
        value: Any = {str(k): convert(args[1] if args else str, v, f"{where}.{k}") for k, v in raw.items()}
    elif dataclasses.is_dataclass(hint):
        return read(hint, raw, where)  # type: ignore[arg-type]
    elif hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: must be true or false")
        value = raw
    elif hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{where}: {raw!r} is not a whole number")
        value = raw
    elif hint is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(f"{where}: {raw!r} is not a number")
        value = float(raw)
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        value = _enum(hint, raw, where)
    elif hint is str or hint is Path:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ConfigError(f"{where}: must be a string, not {_kind(raw)}")
        value = Path(str(raw)) if hint is Path else str(raw)
    else:  # pragma: no cover - a settings class with a field type read() does not know
        raise TypeError(f"{where}: settings field type {hint!r} is not supported")
    if spec.positive and value <= 0:
        raise ConfigError(f"{where}: must be a positive number")
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
        lo, hi = (_num(spec.lo), _num(spec.hi))
        raise ConfigError(f"{where}: {_num(value)} is not in {lo}..{hi}")
    if spec.nonempty and not value:
        raise ConfigError(f"{where}: must not be empty")
    if spec.check is not None:
        reason = spec.check(value)
        if reason is not None:
            raise ConfigError(f"{where}: {reason}")
    return value


# ---------------------------------------------------------------- checks every section uses

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


def ip_address(value: str) -> str | None:
    """An IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    return None


def ip_network(value: str) -> str | None:
    """An IPv4 or IPv6 network of at least four addresses (`10.0.0.0/24`)."""
    try:
        net = ipaddress.ip_network(value)
    except ValueError as exc:
        return f"{value!r} is not a network ({exc})"
    return f"{value!r} is too small" if net.num_addresses < 4 else None


def optional_ip(value: str) -> str | None:
    """Empty, or an IP address."""
    return ip_address(value) if value else None


def dns_label(value: str) -> str | None:
    """An RFC 1123 label, as Kubernetes names are."""
    return None if _LABEL.match(value) else f"{value!r} is not a DNS label (a-z, 0-9, '-', at most 63 chars)"


def host_port(value: str) -> str | None:
    """host:port with a port in 1..65535."""
    host, sep, port = value.removeprefix("http://").removeprefix("https://").rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return f"{value!r} is not host:port"
    return None


# ---------------------------------------------------------------- private


def _enum(cls: type[enum.Enum], raw: Any, where: str) -> enum.Enum:
    for candidate in (raw, str(raw).upper()) if isinstance(raw, str) else (raw,):
        try:
            return cls(candidate)
        except ValueError:
            continue
    raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(str(m.value) for m in cls)}")


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: Any) -> str:
    names = {list: "a list", dict: "a mapping", str: "a string", bool: "true/false"}
    return names.get(type(value), type(value).__name__)


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() and not isinstance(value, float) else str(value)
