"""The authorize stage: nothing reaches an upstream without an explicit allow from policy.

Before asking the policy it reads ``context.usage`` (rate-limit usage of the keys the bundle declares,
:class:`~mcp_guard.pipeline.ratelimit.DeclaredUsage`) — only when the bundle's decision (or the shadow
candidate's) can read it, by the same read-set analysis as the decision cache; otherwise the input carries
``{}`` and no state is read. If that read fails the call is denied ``state_unavailable`` without asking the
policy — a tiered rule must not see a usage it does not have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import structlog

from mcp_guard.errors import StateError
from mcp_guard.frozen import evolve
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome, PolicyVerdict
from mcp_guard.types import Decision, PolicyInput, ReasonCode

__all__ = ["Authorize", "Evaluator", "UsageSource", "policy_input"]

log = structlog.get_logger("mcp_guard.authorize")


class Evaluator(Protocol):
    async def evaluate(self, input: PolicyInput) -> Decision: ...


class UsageSource(Protocol):
    """``context.usage`` for a call: ``{rate-limit key: hits in its window}``. May raise StateError."""

    async def usage(self, ctx: CallContext) -> Mapping[str, int]: ...

    def in_use(self) -> bool:
        """Whether any call could get a usage now (False: every call's ``context.usage`` would be ``{}``)."""
        ...


def policy_input(ctx: CallContext, usage: Mapping[str, int] | None = None) -> PolicyInput:
    return PolicyInput(
        action=ctx.action,
        principal=ctx.principal,
        session=ctx.session,
        server=ctx.server,
        tool=ctx.target,
        arguments=ctx.arguments,
        tool_info=ctx.tool_info,
        secrets_seen=ctx.secrets_seen,
        usage=usage or {},
        flow=ctx.flow.to_policy() if ctx.flow is not None else None,
        omitted=ctx.flow.omitted if ctx.flow is not None else (),
    )


class Authorize:
    """Inside ``call_next``: obligations, ``RecordDecision``, redact and the upstream — reached only with an
    explicit ``allow: true``, given the context with ``decision`` set to that allow. The allow also travels
    back on the outcome (``Outcome.decision``) so the outcome row names the decision that let the call run.

    The input the policy saw and its own decision travel as a :class:`PolicyVerdict` (``ctx.verdict`` inward,
    ``Outcome.verdict`` outward, allow or deny): the decision row keeps it for ``policy replay``, and the
    shadow stage asks a candidate bundle the same question."""

    def __init__(self, engine: Evaluator, usage: UsageSource | None = None) -> None:
        self._engine = engine
        self._usage = usage

    def as_used(self) -> Authorize:
        """Without the usage source while it would read nothing for any call (:mod:`mcp_guard.pipeline.in_use`)."""
        if self._usage is None or self._usage.in_use():
            return self
        return Authorize(self._engine, None)

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        try:
            usage = await self._usage.usage(ctx) if self._usage is not None else {}
        except StateError as e:
            log.error("ratelimit.state_unavailable", error=str(e), call_id=ctx.call_id, stage="usage")
            detail = f"the rate-limit usage of this call cannot be read ({e.cause}); an uncountable call is refused"
            return Outcome(decision=Decision.deny(ReasonCode.STATE_UNAVAILABLE, detail))
        asked = policy_input(ctx, usage)
        decision = await self._engine.evaluate(asked)
        verdict = PolicyVerdict(asked, decision)
        if decision.allow is not True:
            return Outcome(decision=decision, verdict=verdict)
        outcome = await call_next(evolve(ctx, decision=decision, verdict=verdict))
        # A stage inside may have replaced the allow with its own deny (obligations); that one governs then. A
        # re-decision's deny (mcp_guard.pipeline.redecide) comes with its own verdict: the question it answered.
        inner = outcome.verdict if outcome.verdict is not None else verdict
        if outcome.decision is not None:
            return evolve(outcome, verdict=inner)
        return evolve(outcome, decision=decision, verdict=inner)
