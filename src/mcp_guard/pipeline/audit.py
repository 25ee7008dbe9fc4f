"""Audit stages: nothing happens without a record.

* :class:`RecordOutcome` (right inside argument inspection) writes the row that says how the call
  ended — the deny, the result summary or the error — and waits for its commit before the client gets
  an answer. If that write fails for a call that ran, the result is withheld: the client gets an
  ``audit_unavailable`` deny instead.
* :class:`RecordDecision` (the last stage to act before the upstream sees the call) writes the allow row,
  with its obligations, and waits for its commit before the call is forwarded. If the store cannot
  write, the call is not forwarded and is denied with ``audit_unavailable``. If the call is cancelled from
  then on (the client cancels it, its session closes, mcp-guard shuts down), it writes ``call.cancelled``
  — shielded from the cancellation, bounded by :data:`CANCEL_RECORD_TIMEOUT_S` — so an allow row always
  has an outcome row.

Arguments are recorded as :func:`~mcp_guard.audit.events.bound_arguments` allows: beyond
``[audit] max_arguments_bytes`` only their size, digest and a preview.

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

import anyio
import structlog

from mcp_guard.audit import events
from mcp_guard.errors import AuditError
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome, PolicyVerdict
from mcp_guard.settings import AuditSettings
from mcp_guard.types import AuditEvent, Decision, ReasonCode

__all__ = ["CANCEL_RECORD_TIMEOUT_S", "EventSink", "RecordDecision", "RecordOutcome", "decision_row", "outcome_row"]

log = structlog.get_logger("mcp_guard.audit")

CANCEL_RECORD_TIMEOUT_S = 5.0
"""How long a cancelled call may wait for its ``call.cancelled`` row (the cancellation waits with it)."""
_MAX_ARGUMENTS_BYTES: int = AuditSettings.model_fields["max_arguments_bytes"].default


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


def decision_row(
    ctx: CallContext,
    decision: Decision,
    max_arguments_bytes: int,
    verdict: PolicyVerdict | None = None,
    upstream_protocol: str | None = None,
) -> AuditEvent:
    """A ``call.decision`` row; arguments as the audit may hold them (masked by InspectArguments, bounded).

    With the policy's ``verdict`` (the policy was asked), the row keeps the question and the policy's own
    answer for replay (:func:`~mcp_guard.audit.events.policy_record`, bounded by the same limit); a
    re-decision's input responses are kept as masked as its arguments (``PolicyVerdict.audit_responses``),
    and the row says which round it decided (``details.input_round``). ``details.upstream_protocol`` names the era
    the call's upstream is spoken to in, when known (``upstream_protocol``, else the context's): a details key,
    like ``call_id`` — inside the hashed row, no column and no migration."""
    arguments = ctx.audit_arguments if ctx.audit_arguments is not None else ctx.arguments
    policy = None
    if verdict is not None:
        document = verdict.input.to_dict()
        if "input_responses" in document:
            document["input_responses"] = dict(verdict.audit_responses or {})
        policy = events.policy_record(
            document, verdict.decision, max_arguments_bytes, omitted=verdict.input.omitted, source=verdict.input
        )
    return events.call_decision(
        decision,
        arguments=arguments,
        max_arguments_bytes=max_arguments_bytes,
        policy=policy,
        upstream_token=ctx.upstream_token.to_audit() if ctx.upstream_token is not None else None,
        input_round=verdict.input_round if verdict is not None else None,
        upstream_protocol=upstream_protocol or ctx.upstream_protocol,
        **_columns(ctx),
    )


def outcome_row(ctx: CallContext, outcome: Outcome, max_arguments_bytes: int = _MAX_ARGUMENTS_BYTES) -> AuditEvent:
    """The row that says how a call ended, naming the era of the connection it went out on (else the call's).

    A denied call: its ``call.decision`` deny row (for an override, the override — which carries the
    governing decision's id and revision). A call that ran: ``call.error`` or ``call.result`` naming
    the governing decision. A call that ran and whose result the result policy withheld: a ``call.result``
    row saying so (:func:`~mcp_guard.audit.events.call_withheld`), not a second ``call.decision`` row —
    the allow row stands, the call did run.
    """
    era = outcome.upstream_protocol or ctx.upstream_protocol
    denial = outcome.denial
    judged = outcome.result_verdict
    if denial is not None and judged is not None and judged.withheld is not None:
        return events.call_withheld(
            outcome.decision,
            judged.withheld,
            denial=denial,
            result_decision=judged.decision,
            upstream_protocol=era,
            **_columns(ctx),
        )
    if denial is not None:
        return decision_row(ctx, denial, max_arguments_bytes, outcome.verdict, era)
    if outcome.error is not None:
        return events.call_error(
            outcome.decision,
            outcome.error.code,
            outcome.error.message,
            origin=outcome.error_origin,
            upstream_protocol=era,
            **_columns(ctx),
        )
    if judged is not None:
        return events.call_result(
            outcome.decision,
            outcome.result or {},
            result_decision=judged.decision,
            redacted=judged.redacted,
            upstream_protocol=era,
            **_columns(ctx),
        )
    return events.call_result(outcome.decision, outcome.result or {}, upstream_protocol=era, **_columns(ctx))


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
    """Inside ``call_next``: ``ResultPolicy`` → ``Redact`` → ``Forward`` — reached only once the allow row is committed.

    A cancellation from the moment the allow row is on its way to the store is recorded as
    ``call.cancelled`` (the allow row may commit although its writer was cancelled) and re-raised.
    """

    def __init__(self, sink: EventSink, *, max_arguments_bytes: int = _MAX_ARGUMENTS_BYTES) -> None:
        self._sink = sink
        self._max_arguments_bytes = max_arguments_bytes

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        decision = ctx.decision
        assert decision is not None and decision.allow, "RecordDecision runs after an allow"
        try:
            try:
                await self._sink.record(decision_row(ctx, decision, self._max_arguments_bytes, ctx.verdict))
            except AuditError as e:
                _unavailable(ctx, "decision", e, decision)
                return Outcome.fail_closed(
                    decision,
                    ReasonCode.AUDIT_UNAVAILABLE,
                    "the audit store cannot record this call, so it was not forwarded",
                )
            if ctx.admitted is not None:
                ctx.admitted()  # the call will run: a task's handle may be answered now
            return await call_next(ctx)
        except anyio.get_cancelled_exc_class():
            await self._record_cancelled(ctx, decision)
            raise

    async def _record_cancelled(self, ctx: CallContext, decision: Decision) -> None:
        """The ``call.cancelled`` row, written in the cancel path: shielded, and bounded in time."""
        with anyio.move_on_after(CANCEL_RECORD_TIMEOUT_S, shield=True) as scope:
            try:
                row = events.call_cancelled(decision, upstream_protocol=ctx.upstream_protocol, **_columns(ctx))
                await self._sink.record(row)
            except AuditError as e:
                _unavailable(ctx, "cancelled", e, decision)
        if scope.cancelled_caught:
            _unavailable(ctx, "cancelled", AuditError("timed out recording the cancellation"), decision)


class RecordOutcome:
    """Inside ``call_next``: pin-check, authorize, obligations, ``RecordDecision``, the result policy, redact and
    the upstream; what they return is recorded (:func:`outcome_row`) before it is returned."""

    def __init__(self, sink: EventSink, *, max_arguments_bytes: int = _MAX_ARGUMENTS_BYTES) -> None:
        self._sink = sink
        self._max_arguments_bytes = max_arguments_bytes

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        outcome = await call_next(ctx)
        try:
            await self._sink.record(outcome_row(ctx, outcome, self._max_arguments_bytes))
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
