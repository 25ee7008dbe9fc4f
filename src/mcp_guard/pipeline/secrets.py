"""Secrets in the pipeline: what the policy and the audit trail learn about credentials, and their grant.

* :class:`InspectArguments` (a stage) fills ``ctx.audit_arguments`` with a copy of the arguments from
  which every known secret value (any encoding) is scrubbed and every well-known credential shape is
  masked, and ``ctx.secrets_seen`` with the kinds found (``jwt``, ``aws_access_key``, …, and
  ``injected:<secret>`` when an argument holds the value of a configured secret). The arguments
  forwarded upstream are not changed. It must run *outside* every stage that records or logs the
  call (first in the chain): a stage only sees the context it was given, so an audit stage placed
  before it would record the raw arguments.

* :class:`SecretsObligation` (the ``secrets`` handler of
  :class:`~mcp_guard.pipeline.obligations.EnforceObligations`): if the upstream gets injected secrets,
  the policy decision must grant every one of them in ``obligations.secrets`` (a list of secret
  names), otherwise the call is **denied** with reason code ``secret_not_granted``. It runs whether or
  not the key is present (``always``): a decision that grants nothing grants nothing. A value that is
  not a list of strings is ``obligation_invalid``.

  For an upstream with a per-principal secret (one connection per principal, mcp_guard.upstream.pool),
  a granted call of a principal that has no value of that secret is **denied** with reason code
  ``credential_missing`` (the reason names the secret and what is missing, never a value): it is not
  forwarded to anyone else's connection, and no connection is started for it.

  Why deny rather than "run without the credential": a stdio upstream receives its secrets as
  environment variables of a long-lived child process and an HTTP upstream as headers of a
  long-lived connection, so a credential cannot be withheld from one call while the next call from
  someone else uses it. Forwarding the call anyway would let it act with a credential the policy did
  not grant; the honest behaviour is to refuse it and say why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mcp_guard.frozen import evolve
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.pipeline.obligations import ABSENT, Refusal, invalid
from mcp_guard.pipeline.secret_source import CredentialCheck, SecretSource
from mcp_guard.secrets.redact import Scrubber
from mcp_guard.secrets.shapes import field_kind, mask
from mcp_guard.types import ReasonCode

__all__ = [
    "INJECTED_PREFIX",
    "InspectArguments",
    "SecretsObligation",
    "granted_secrets",
    "inspect_arguments",
    "strip_meta_credentials",
]

INJECTED_PREFIX = "injected:"


def inspect_arguments(arguments: Any, scrubber: Scrubber) -> tuple[Any, tuple[str, ...]]:
    """``(audit copy, kinds)``: known secret values scrubbed, credential shapes masked."""
    found = {INJECTED_PREFIX + name for name in scrubber.found_in(arguments)} if scrubber else set()
    scrubbed = scrubber.scrub_obj(arguments)
    masked, kinds = mask(scrubbed)
    return masked, tuple(sorted(found | set(kinds)))


class InspectArguments:
    """Inside ``call_next``: every other stage and the upstream, all given the context with
    ``audit_arguments`` and ``secrets_seen`` filled (the arguments themselves unchanged)."""

    def __init__(self, secrets: SecretSource) -> None:
        self._secrets = secrets

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        audit, kinds = inspect_arguments(dict(ctx.arguments), self._secrets.scrubber)
        seen = tuple(sorted(set(ctx.secrets_seen) | set(kinds)))
        return await call_next(evolve(ctx, audit_arguments=audit, secrets_seen=seen))


def strip_meta_credentials(meta: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """A client's ``_meta`` without anything credential-like, and the keys removed.

    No token passthrough: a key named like a credential (``authorization``, ``token``, ``cookie``,
    ``api_key``, … but not ``progressToken``) or a value holding a credential shape is dropped
    before the request is forwarded upstream.
    """
    if not meta:
        return (dict(meta) if meta is not None else None), ()
    kept: dict[str, Any] = {}
    removed: list[str] = []
    for key, value in meta.items():
        if field_kind(key) is not None or mask(value)[1]:
            removed.append(key)
        else:
            kept[key] = value
    return kept, tuple(removed)


def granted_secrets(value: object) -> set[str] | None:
    """The secret names an ``obligations.secrets`` value grants; ``None`` if it is not a list of strings."""
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        return None
    return set(value)


class SecretsObligation:
    """The ``secrets`` obligation: an upstream's injected secrets must all be granted to the call."""

    name = "secrets"
    always = True  # an upstream that runs with secrets needs the grant even when the decision names none

    def __init__(self, secrets: SecretSource, credentials: CredentialCheck | None = None) -> None:
        self._secrets = secrets
        self._credentials = credentials

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | None:
        granted = set() if value is ABSENT else granted_secrets(value)
        if granted is None:
            return invalid(self.name, "a list of secret names", value)
        missing = self._secrets.secret_names_for(ctx.server) - granted
        if not missing:
            return await self._own_credential(ctx)
        return Refusal(
            ReasonCode.SECRET_NOT_GRANTED,
            f"upstream {ctx.server!r} runs with secret(s) {_names(missing)} that the policy "
            "decision does not grant to this call (obligations.secrets)",
        )

    async def _own_credential(self, ctx: CallContext) -> Refusal | None:
        """``credential_missing`` when the upstream needs a per-principal credential the caller does not have."""
        if self._credentials is None:
            return None
        problem = await self._credentials.credential_problem(ctx.server, ctx.principal.id)
        if problem is None:
            return None
        return Refusal(
            ReasonCode.CREDENTIAL_MISSING,
            f"upstream {ctx.server!r} runs with a credential of each caller's own, and principal "
            f"{ctx.principal.id!r} has none: {problem}",
        )


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))
