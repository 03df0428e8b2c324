"""The error tree, shaped by what callers catch."""

from __future__ import annotations


class MeshfedError(Exception):
    """Base of every error meshfed raises on purpose."""


class ConfigError(MeshfedError):
    """A config file, flag or environment variable is wrong; the message names file, field and reason."""


class RegistryUnavailable(MeshfedError):
    """etcd could not be reached or did not answer in time; retryable."""


class RecordError(MeshfedError):
    """A registry key or value failed validation; the message says why."""


class LocalProtocolError(MeshfedError):
    """We tried to do something the protocol forbids: a bug on our side."""


class RemoteProtocolError(MeshfedError):
    """The peer misbehaved; close that stream only."""

    def __init__(self, message: str, cause: str = "protocol") -> None:
        super().__init__(message)
        self.cause = cause
        """The kind of fault, from a fixed set: what logs of it are de-duplicated by (the message may
        quote what the peer sent)."""


class PolicyError(RecordError):
    """A policy document or stored policy is invalid: `field` is the path of the bad field (e.g.
    `spec.retries.attempts`), `reason` says what is wrong with it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason
