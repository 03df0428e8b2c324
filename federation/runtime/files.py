"""Files on disk: atomic writes with the mode they need (0600 for keys and agent state, 0644 for certificates),
and the TLS file triple."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A CA bundle, a certificate (chain) and its private key, as files: etcd's client or server TLS."""

    ca: Path
    """The CA bundle the peer's certificate must verify to."""
    cert: Path
    """Our certificate, followed by any intermediates."""
    key: Path
    """Its private key (0600)."""


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only (0600), whatever the umask, replacing atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    """Write a certificate file (0644), replacing atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)
