"""Audit stages: nothing happens without a record.

* :class:`RecordOutcome` (right inside argument inspection) writes the row that says how the call
  ended — the deny, the result summary or the error — and waits for its commit before the client gets
  an answer. If that write fails for a call that ran, the result is withheld: the client gets an
  ``audit_unavailable`` deny instead.
* :class:`RecordDecision` (the last stage to act before the upstream sees the call) writes the allow row,
  with its obligations, and waits for its commit before the call is forwarded. If the store cannot
  write, the call is not forwarded and is denied with ``audit_unavailable``.

Both failures are *overrides* (:meth:`Outcome.fail_closed <mcp_guard.pipeline.context.Outcome.fail_closed>`):
``Outcome.decision`` stays the policy's allow, ``Outcome.override`` is the ``audit_unavailable`` deny
with the same decision id and policy revision. So:

* audit down **before** forwarding: ``RecordOutcome`` tries once more to write a ``call.decision`` deny
  row for the override — naming the governing decision's id and revision — and, if the store is still
  down, logs ``audit.unavailable`` with the same fields; the upstream never saw the call.
* audit down **after** forwarding: the allow row exists; the result is withheld and ``audit.unavailable``
  is logged with the decision id and revision (there is no store to write the outcome to).

Rows are built with :mod:`mcp_guard.audit.events` (one constructor per row kind).
"""

from __future__ import annotations

import time
from typing import Protocol, TypedDict

import structlog

from mcp_guard.audit import events
from mcp_guard.errors import AuditError
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.types import AuditEvent, Decision, ReasonCode

__all__ = ["EventSink", "RecordDecision", "RecordOutcome", "outcome_row"]

log = structlog.get_logger("mcp_guard.audit")


class EventSink(Protocol):
    async def record(self, event: AuditEvent) -> int: ...

    def record_nowait(self, event: AuditEvent) -> None: ...


class _CallColumns(TypedDict):
    """The columns every row about one call fills (see :mod:`mcp_guard.audit.events`)."""

    session_id: str | None
    principal: str
    action: str
    server: str | None
    tool: str | None
    call_id: str | None
    duration_ms: float | None


def _columns(ctx: CallContext) -> _CallColumns:
    return {
        "session_id": ctx.session.id,
        "principal": ctx.principal.id,
        "action": ctx.action,
        "server": ctx.server,
        "tool": ctx.target,
        "call_id": ctx.call_id,
        "duration_ms": round((time.perf_counter() - ctx.started) * 1000, 3),
    }


def _decision_row(ctx: CallContext, decision: Decision) -> AuditEvent:
    """A ``call.decision`` row; arguments as the audit may hold them (masked by InspectArguments)."""
    arguments = ctx.audit_arguments if ctx.audit_arguments is not None else ctx.arguments
    return events.call_decision(decision, arguments=arguments, **_columns(ctx))


def outcome_row(ctx: CallContext, outcome: Outcome) -> AuditEvent:
    """The row that says how a call ended.

    A denied call: its ``call.decision`` deny row (for an override, the override — which carries the
    governing decision's id and revision). A call that ran: ``call.error`` or ``call.result`` naming
    the governing decision.
    """
    denial = outcome.denial
    if denial is not None:
        return _decision_row(ctx, denial)
    if outcome.error is not None:
        return events.call_error(outcome.decision, outcome.error.code, outcome.error.message, **_columns(ctx))
    return events.call_result(outcome.decision, outcome.result or {}, **_columns(ctx))


def _unavailable(ctx: CallContext, stage: str, error: AuditError, decision: Decision | None) -> None:
    log.error(
        "audit.unavailable",
        stage=stage,
        error=str(error),
        call_id=ctx.call_id,
        decision_id=decision.decision_id if decision else None,
        policy_revision=decision.revision if decision else None,
    )


class RecordDecision:
    """Inside ``call_next``: ``Redact`` → ``Forward`` — reached only once the allow row is committed."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        decision = ctx.decision
        assert decision is not None and decision.allow, "RecordDecision runs after an allow"
        try:
            await self._sink.record(_decision_row(ctx, decision))
        except AuditError as e:
            _unavailable(ctx, "decision", e, decision)
            return Outcome.fail_closed(
                decision,
                ReasonCode.AUDIT_UNAVAILABLE,
                "the audit store cannot record this call, so it was not forwarded",
            )
        return await call_next(ctx)


class RecordOutcome:
    """Inside ``call_next``: pin-check, authorize, obligations, ``RecordDecision``, redact and the upstream;
    what they return is recorded (:func:`outcome_row`) before it is returned."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        outcome = await call_next(ctx)
        try:
            await self._sink.record(outcome_row(ctx, outcome))
        except AuditError as e:
            _unavailable(ctx, "outcome", e, outcome.decision)
            if outcome.denied:
                return outcome  # nothing ran and nothing is withheld; the log line is the record
            return Outcome.fail_closed(
                outcome.decision,
                ReasonCode.AUDIT_UNAVAILABLE,
                "the call ran but its outcome could not be recorded; result withheld",
            )
        return outcome
