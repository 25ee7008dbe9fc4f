"""Per-principal secrets: one value per calling principal, named by ``{principal}`` in the secret's ``name``.

``[secrets.github_token] provider = "env", name = "GITHUB_TOKEN_{principal}"`` reads ``GITHUB_TOKEN_alice``
for alice and ``GITHUB_TOKEN_bob`` for bob; ``provider = "file", name = "tokens/{principal}"`` reads one file
per principal under a directory; ``provider = "command"`` substitutes into each argv element (``pass show
github/{principal}``).

Why a template rather than a table of principal → value: the credentials live where the operator already
keeps them (a secret store, mounted files, the environment), one per user, and adding a user is adding their
credential there, not editing mcp-guard's config.

The substituted id is checked, never transformed: mapping ``a-b`` and ``a_b`` to the same variable would let
one principal use another's credential. An env name takes only ``[A-Za-z0-9_]``; a file path or argv element
takes ``[A-Za-z0-9_]`` first and then also ``.``, ``@``, ``-`` (no ``/``, no leading dot: the path never
leaves its directory). A principal whose id does not fit simply has no credential
(:class:`~mcp_guard.errors.SecretError`, which the pipeline turns into ``credential_missing``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from mcp_guard.secrets.providers import SecretProvider, SecretRef, build_provider
from mcp_guard.settings import PRINCIPAL_PLACEHOLDER, SecretSettings

__all__ = ["MAX_CACHED_PRINCIPALS", "PerPrincipalProvider", "principal_id_problem", "substitute"]

MAX_CACHED_PRINCIPALS = 1024  # concrete providers kept (a file provider caches its value): least recent dropped
_ENV_ID = re.compile(r"^[A-Za-z0-9_]+$")
_PATH_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")
_MAX_ID = 128


def principal_id_problem(settings: SecretSettings, principal: str) -> str | None:
    """Why ``principal`` cannot be substituted into ``settings``' name, or None if it can."""
    pattern, allowed = (_ENV_ID, "A-Z a-z 0-9 _") if settings.provider == "env" else (_PATH_ID, "A-Z a-z 0-9 _ . @ -")
    if len(principal) > _MAX_ID or not pattern.match(principal):
        return (
            f"principal id {principal!r} cannot name a per-principal {settings.provider} secret "
            f"(only {allowed}, at most {_MAX_ID} characters)"
        )
    return None


def substitute(settings: SecretSettings, principal: str) -> SecretSettings:
    """``settings`` with ``{principal}`` replaced by ``principal`` (checked by :func:`principal_id_problem`)."""
    if isinstance(settings.name, list):
        name: str | list[str] = [part.replace(PRINCIPAL_PLACEHOLDER, principal) for part in settings.name]
    else:
        name = settings.name.replace(PRINCIPAL_PLACEHOLDER, principal)
    return settings.model_copy(update={"name": name})


class PerPrincipalProvider:
    """A per-principal secret: builds (and keeps, LRU) the concrete provider of each principal on first use."""

    def __init__(
        self,
        settings: SecretSettings,
        *,
        resolve_path: Callable[[str], Path] = Path,
        cwd: str | Path | None = None,
        scrub: Callable[[str], str] = lambda s: s,
    ) -> None:
        self.settings = settings
        self._build: Callable[[SecretSettings], SecretProvider] = lambda s: build_provider(
            s, resolve_path=resolve_path, cwd=cwd, scrub=scrub
        )
        self._providers: OrderedDict[str, SecretProvider] = OrderedDict()

    def __repr__(self) -> str:
        return f"PerPrincipalProvider({self.settings.provider!r})"

    def provider_for(self, ref: SecretRef, principal: str) -> SecretProvider:
        """The concrete provider of ``principal``'s value. Raises SecretError if the id cannot be substituted."""
        provider = self._providers.get(principal)
        if provider is not None:
            self._providers.move_to_end(principal)
            return provider
        problem = principal_id_problem(self.settings, principal)
        if problem is not None:
            raise ref.error(problem)
        provider = self._providers[principal] = self._build(substitute(self.settings, principal))
        while len(self._providers) > MAX_CACHED_PRINCIPALS:
            self._providers.popitem(last=False)
        return provider

    async def resolve_for(self, ref: SecretRef, principal: str) -> SecretStr:
        return await self.provider_for(ref, principal).resolve(ref)
