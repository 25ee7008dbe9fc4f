"""The secrets seam: what the guard needs of the secrets of a configuration, and the null object.

:class:`SecretSource` is the part of :class:`~mcp_guard.secrets.manager.SecretManager` the rest of
mcp-guard relies on: which secrets an upstream runs with, their injection when it (re)starts, and the
scrubber over every value resolved so far.

:data:`NO_SECRETS` stands in when no secrets are configured (tests, a guard built without a
manager). The pipeline is the same either way — no ``if secrets is not None`` anywhere: with the null
object no upstream needs a grant, nothing is injected, the scrubber is empty (so redaction leaves
everything as it is), and argument inspection still masks credential shapes in the audit copy.
"""

from __future__ import annotations

from typing import Protocol

from mcp_guard.secrets.redact import Scrubber
from mcp_guard.upstream.connection import Injections

__all__ = ["NO_SECRETS", "CredentialCheck", "NoSecrets", "SecretSource"]


class SecretSource(Protocol):
    """What the pipeline and the upstream registry need of the configured secrets."""

    @property
    def scrubber(self) -> Scrubber:
        """A scrubber over every secret value resolved so far (replaced, never mutated)."""
        ...

    def secret_names_for(self, upstream: str) -> set[str]:
        """The secrets injected into ``upstream`` (empty for one without any)."""
        ...

    async def injections_for(self, upstream: str) -> Injections:
        """The env vars (stdio) or headers (HTTP) carrying ``upstream``'s secrets, and nothing else."""
        ...

    def pooled_upstreams(self) -> frozenset[str]:
        """The upstreams with a per-principal secret: one connection per principal (mcp_guard.upstream.pool)."""
        ...

    async def injections_for_principal(self, upstream: str, principal: str) -> Injections:
        """:meth:`injections_for` of ``principal``'s own connection (raises SecretError if it has no credential)."""
        ...


class CredentialCheck(Protocol):
    """Whether a principal has its own credential for an upstream (the registry's pools answer it)."""

    async def credential_problem(self, upstream: str, principal: str) -> str | None:
        """Why ``principal`` has no credential for ``upstream``; None if it has one or needs none."""
        ...


class NoSecrets:
    """The null :class:`SecretSource`: no secrets are configured."""

    _EMPTY = Scrubber()

    @property
    def scrubber(self) -> Scrubber:
        return self._EMPTY

    def secret_names_for(self, upstream: str) -> set[str]:
        return set()

    async def injections_for(self, upstream: str) -> Injections:
        return Injections()

    def pooled_upstreams(self) -> frozenset[str]:
        return frozenset()

    async def injections_for_principal(self, upstream: str, principal: str) -> Injections:
        return Injections()

    def __repr__(self) -> str:
        return "NO_SECRETS"


NO_SECRETS: SecretSource = NoSecrets()
