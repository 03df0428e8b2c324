"""The skeleton every config section's parser shares: a mapping, known fields only, one dataclass out."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from federation.core.errors import ConfigError

T = TypeVar("T")

FieldParser = Callable[[str, Any, Any, str], Any]
"""(field name, raw value, the field's default, "where.field") -> the parsed value, or raise ConfigError."""


def parse_section(cls: Callable[..., T], data: Any, where: str, field: FieldParser) -> T:
    """Build `cls` (a dataclass with defaults for every field) from the `where:` section of a config file.

    Unknown fields are refused with the list of known ones ("-" may stand for "_"); each value goes
    through `field`, which validates and converts it.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    defaults = cls()
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise ConfigError(f"{where}.{key}: unknown field (known: {', '.join(sorted(fields))})")
        values[name] = field(name, value, getattr(defaults, name), f"{where}.{key}")
    return cls(**values)
