"""The mcp-guard error tree.

Every error mcp-guard raises on purpose derives from :class:`MCPGuardError` and carries the
context a person needs to act on it (the file, key, upstream or secret involved)::

    MCPGuardError
    ├── ConfigError            bad/missing config file, unknown key, bad value   (CLI exit 2)
    ├── PolicyError            bundle does not parse / engine cannot be set up    (CLI exit 2)
    ├── SecretError            a secret cannot be resolved (names secret + upstream)
    ├── UpstreamError          an upstream is down, crashed, timed out or misbehaved
    │   └── UpstreamTimeout    a call exceeded the upstream's timeout_s
    ├── AuditError             the audit store cannot write or read
    └── StateError             the state store (rate-limit counters, …) cannot answer

A policy *deny* is not an error: it is a :class:`mcp_guard.types.Decision` value.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "ConfigError",
    "MCPGuardError",
    "PolicyError",
    "SecretError",
    "StateError",
    "UpstreamError",
    "UpstreamTimeout",
]


class MCPGuardError(Exception):
    """Base class of every error mcp-guard raises deliberately."""


class ConfigError(MCPGuardError):
    """The configuration is missing or invalid. The message names file, key and problem."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class PolicyError(MCPGuardError):
    """A policy bundle cannot be loaded or an engine cannot be set up."""


class SecretError(MCPGuardError):
    """A secret cannot be resolved."""

    def __init__(self, message: str, *, secret: str | None = None, upstream: str | None = None) -> None:
        self.secret = secret
        self.upstream = upstream
        super().__init__(message)


class UpstreamError(MCPGuardError):
    """An upstream MCP server is unavailable or misbehaved."""

    def __init__(self, message: str, *, upstream: str | None = None) -> None:
        self.upstream = upstream
        super().__init__(message)


class UpstreamTimeout(UpstreamError):
    """A request to an upstream exceeded its timeout."""


class AuditError(MCPGuardError):
    """The audit store cannot write (or read) events."""


class StateError(MCPGuardError):
    """The state store (:mod:`mcp_guard.state`) cannot answer: unreachable, unwritable or too slow.

    Whatever needed the state fails closed (a call is denied with ``state_unavailable``). ``cause`` is the
    short reason without paths or addresses (``database is locked``, ``timed out after 1000 ms``), fit to
    be told to a client; the message names the store for the operator's log."""

    def __init__(self, message: str, *, cause: str) -> None:
        self.cause = cause
        super().__init__(message)
