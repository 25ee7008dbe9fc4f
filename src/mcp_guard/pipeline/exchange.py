"""Token exchange in the pipeline: each call to a ``token_exchange`` upstream carries the caller's own, narrowed token.

* :class:`UpstreamScopesObligation` (the ``upstream_scopes`` handler of
  :class:`~mcp_guard.pipeline.obligations.EnforceObligations`) checks the policy's per-call downscoping:
  ``obligations.upstream_scopes`` must be a non-empty list of scope strings (else ``obligation_invalid``),
  every one of them among the upstream's ``token_exchange.scopes`` (else ``upstream_scope_not_allowed``,
  naming the scopes), and the upstream must exchange tokens at all (else ``obligation_invalid``: the policy
  asked for something mcp-guard cannot do for this call).

* :class:`ExchangeToken` (a stage, between ``EnforceObligations`` and ``RecordDecision``) exchanges the caller's
  validated access token for one with the upstream's audience and the call's scopes — ``upstream_scopes`` when
  the policy narrowed them, else every configured scope (:class:`~mcp_guard.upstream.token_exchange.TokenExchanger`,
  cached) — and hands it inward on the context: ``RecordDecision`` records its audience and scopes in the allow
  row, ``Forward`` sends it as this request's Authorization. A caller with no access token (an API key, stdio)
  is denied ``subject_token_missing``; an exchange the IdP refuses, or an IdP that does not answer in time, is
  denied ``token_exchange_failed``. Either deny is made before the allow is recorded, so the call has a deny
  row with the reason and is never forwarded — with a wrong token or the gateway's own.

Why a stage and not only an obligation handler: a handler may refuse a call but cannot change the context
Forward sees, and the exchanged token must reach Forward (and the allow row) for this call only. It runs after
every obligation, so a call parked for approval is exchanged when it is let through (a fresh token), and a
rate-limited call costs the IdP nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import structlog

from mcp_guard.frozen import evolve
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.pipeline.obligations import ABSENT, Refusal, invalid
from mcp_guard.types import Decision, ReasonCode
from mcp_guard.upstream.token_exchange import ExchangeError, TokenExchanger

__all__ = ["OBLIGATION", "ExchangeToken", "Exchangers", "UpstreamScopesObligation", "requested_scopes"]

log = structlog.get_logger("mcp_guard.exchange")

OBLIGATION = "upstream_scopes"


class Exchangers(Protocol):
    """Where the token exchangers of the upstreams are (the registry: one per ``token_exchange`` upstream)."""

    @property
    def exchangers(self) -> Mapping[str, TokenExchanger]: ...


def requested_scopes(server: str, exchanger: TokenExchanger | None, value: object) -> tuple[str, ...] | Refusal:
    """The scopes a call's exchanged token is asked for: ``upstream_scopes`` (checked) or every configured one."""
    if exchanger is None:
        if value is ABSENT:
            return ()
        return Refusal(
            ReasonCode.OBLIGATION_INVALID,
            f"obligations.{OBLIGATION} applies only to an upstream with token_exchange; {server!r} has none",
        )
    if value is ABSENT:
        return tuple(sorted(exchanger.scopes))
    if not isinstance(value, list | tuple) or not value or not all(isinstance(s, str) and s for s in value):
        return invalid(OBLIGATION, "a non-empty list of scope strings", value)
    outside = sorted(set(value) - set(exchanger.scopes))
    if outside:
        return Refusal(
            ReasonCode.UPSTREAM_SCOPE_NOT_ALLOWED,
            f"obligations.{OBLIGATION} asks for scope(s) {', '.join(repr(s) for s in outside)} that upstream "
            f"{server!r} may not be given (token_exchange.scopes: {', '.join(exchanger.scopes) or 'none'})",
        )
    return tuple(sorted(set(value)))


class UpstreamScopesObligation:
    """The ``upstream_scopes`` obligation: a well-formed subset of the upstream's exchange scopes."""

    name = OBLIGATION
    always = False

    def __init__(self, exchangers: Exchangers) -> None:
        self._exchangers = exchangers

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | None:
        scopes = requested_scopes(ctx.server, self._exchangers.exchangers.get(ctx.server), value)
        return scopes if isinstance(scopes, Refusal) else None


class ExchangeToken:
    """Inside ``call_next``: ``RecordDecision`` → … → ``Forward``, given the call's exchanged token (if its upstream
    exchanges tokens; any other call passes through untouched).

    Always composed, even while no upstream exchanges tokens (:mod:`mcp_guard.pipeline.in_use` could leave it out):
    the question is asked when the call gets here, so a call that entered the pipeline before a config reload made
    its upstream a ``token_exchange`` one — one parked for approval for minutes, say — is still forwarded with the
    caller's exchanged token, never with what the upstream was given before. It costs a dict lookup."""

    def __init__(self, exchangers: Exchangers) -> None:
        self._exchangers = exchangers

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        exchanger = self._exchangers.exchangers.get(ctx.server)
        if exchanger is None:
            return await call_next(ctx)
        decision = ctx.decision
        assert decision is not None and decision.allow, "ExchangeToken runs after an allow"
        scopes = requested_scopes(ctx.server, exchanger, decision.obligations.get(OBLIGATION, ABSENT))
        if isinstance(scopes, Refusal):  # EnforceObligations refused it already; never forward unchecked
            return _deny(decision, scopes.code, scopes.detail)
        subject = ctx.principal.auth.subject_token
        if subject is None:
            return _deny(
                decision,
                ReasonCode.SUBJECT_TOKEN_MISSING,
                f"upstream {ctx.server!r} is called with each caller's own token (token_exchange), and principal "
                f"{ctx.principal.id!r} authenticated with {ctx.principal.auth.method} has no access token to exchange",
            )
        try:
            token = await exchanger.exchange(subject, scopes)
        except ExchangeError as e:
            log.warning("token_exchange.failed", upstream=ctx.server, principal=ctx.principal.id, reason=str(e))
            return _deny(decision, ReasonCode.TOKEN_EXCHANGE_FAILED, f"upstream {ctx.server!r}: token exchange: {e}")
        return await call_next(evolve(ctx, upstream_token=token))


def _deny(allow: Decision, code: ReasonCode, detail: str) -> Outcome:
    """The deny that replaces the allow (no allow row was written yet), carrying its policy revision."""
    return Outcome(decision=Decision.deny(code, detail, revision=allow.revision))
