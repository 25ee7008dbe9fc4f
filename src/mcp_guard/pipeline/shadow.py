"""The shadow stage: every call the policy decides is also decided by a candidate bundle that never enforces.

``[policy] shadow_bundle = DIR`` loads a second bundle into its own embedded engine
(:func:`mcp_guard.policy.shadow.load_shadow`). This stage sits right outside ``Authorize``: when the call
comes back it holds the policy's :class:`~mcp_guard.pipeline.context.PolicyVerdict` — the exact input the
enforcing engine saw (recorded context included) and that engine's own decision, allow or deny — and asks
the candidate the same question. So:

* the candidate never changes the outcome and never delays the upstream (it is asked after the call);
* its cost is bounded by its own ``timeout_ms`` (the embedded engine's measured budget), and a candidate
  failure — an exception, an ``engine_error`` or ``timeout`` deny — is counted (``errors``), logged, and
  never propagated;
* a disagreement (:func:`mcp_guard.policy.replay.compare`: allow→deny, deny→allow, reasons, obligations)
  is counted by kind and audited as ``policy.shadow_diff`` with both decisions and the decision id, written
  without waiting (``record_nowait``): a shadow row must not hold a call up or fail it.

Calls denied before the policy was asked (``tool_changed``, ``state_unavailable``) carry no verdict and
are not shadowed. With no shadow bundle (``candidate=None``) the stage passes every call through, and the
composed pipeline leaves it out (:mod:`mcp_guard.pipeline.in_use`): the stage list never branches on
configuration.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import structlog

from mcp_guard.audit import events
from mcp_guard.pipeline.audit import EventSink
from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome, PolicyVerdict
from mcp_guard.policy.replay import Change, compare
from mcp_guard.types import Decision, ReasonCode

__all__ = ["ShadowPolicy", "ShadowStats"]

log = structlog.get_logger("mcp_guard.shadow")

# A candidate deny with one of these codes is the candidate failing, not disagreeing.
_FAILURES = frozenset({ReasonCode.ENGINE_ERROR, ReasonCode.TIMEOUT})


@dataclass(slots=True)
class ShadowStats:
    """Counters for ``/metrics`` (``frontend/ops``): calls the candidate decided, disagreements by kind,
    candidate failures. Bumped in place on the event loop, read at scrape time."""

    enabled: bool = False
    revision: str | None = None
    decided: int = 0
    errors: int = 0
    diffs: Counter[str] = field(default_factory=Counter)


class ShadowPolicy:
    """Inside ``call_next``: ``Authorize`` and everything within it. The candidate is asked after, with the
    verdict the outcome carries; the outcome is returned unchanged whatever happens."""

    def __init__(self, candidate: Evaluator | None, sink: EventSink, stats: ShadowStats | None = None) -> None:
        self._candidate = candidate
        self._sink = sink
        self.stats = stats if stats is not None else ShadowStats()
        self.stats.enabled = candidate is not None
        self.stats.revision = getattr(candidate, "revision", None)

    def as_used(self) -> ShadowPolicy | None:
        """Left out of the pipeline without a candidate (:mod:`mcp_guard.pipeline.in_use`)."""
        return self if self._candidate is not None else None

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        outcome = await call_next(ctx)
        if self._candidate is not None and outcome.verdict is not None:
            await self._shadow(ctx, outcome.verdict)
        return outcome

    async def _shadow(self, ctx: CallContext, verdict: PolicyVerdict) -> None:
        assert self._candidate is not None
        try:
            shadow = await self._candidate.evaluate(verdict.input)
        except Exception as e:  # the candidate must never fail a call: counted and logged, not propagated
            self.stats.errors += 1
            log.warning("policy.shadow_error", error=f"{type(e).__name__}: {e}", call_id=ctx.call_id)
            return
        if shadow.code in _FAILURES:
            self.stats.errors += 1
            log.warning("policy.shadow_error", error="; ".join(shadow.reasons), call_id=ctx.call_id)
            return
        self.stats.decided += 1
        enforced = verdict.decision
        change = compare(enforced.allow, enforced.reasons, enforced.obligations, shadow)
        if change is None:
            return
        self.stats.diffs[str(change)] += 1
        self._record(ctx, enforced, shadow, change)

    def _record(self, ctx: CallContext, enforced: Decision, shadow: Decision, change: Change) -> None:
        self._sink.record_nowait(
            events.policy_shadow_diff(
                decision_id=enforced.decision_id,
                session_id=ctx.session.id,
                principal=ctx.principal.id,
                server=ctx.server,
                tool=ctx.target,
                enforced=enforced,
                shadow=shadow,
                change=str(change),
            )
        )
