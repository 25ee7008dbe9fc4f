"""The authorize stage: nothing reaches an upstream without an explicit allow from policy."""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.types import Decision, PolicyInput

__all__ = ["Authorize", "Evaluator", "policy_input"]


class Evaluator(Protocol):
    async def evaluate(self, input: PolicyInput) -> Decision: ...


def policy_input(ctx: CallContext) -> PolicyInput:
    return PolicyInput(
        action=ctx.action,
        principal=ctx.principal,
        session=ctx.session,
        server=ctx.server,
        tool=ctx.target,
        arguments=ctx.arguments,
        tool_info=ctx.tool_info,
        session_calls=ctx.session_calls,
        secrets_seen=ctx.secrets_seen,
    )


class Authorize:
    """Inside ``call_next``: obligations, ``RecordDecision``, redact and the upstream — reached only with an
    explicit ``allow: true``, given the context with ``decision`` set to that allow. The allow also travels
    back on the outcome (``Outcome.decision``) so the outcome row names the decision that let the call run."""

    def __init__(self, engine: Evaluator) -> None:
        self._engine = engine

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        decision = await self._engine.evaluate(policy_input(ctx))
        if decision.allow is not True:
            return Outcome(decision=decision)
        outcome = await call_next(replace(ctx, decision=decision))
        # A stage inside may have replaced the allow with its own deny (obligations); that one governs then.
        return outcome if outcome.decision is not None else replace(outcome, decision=decision)
