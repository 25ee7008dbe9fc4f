"""Audit stages: nothing happens without a record.

* :class:`RecordOutcome` (outermost) writes the row that says how the call ended — the deny, the
  result summary or the error — and waits for its commit before the client gets an answer.
* :class:`RecordDecision` (after authorize and pin-check) writes the allow decision and waits for
  its commit before the call is forwarded. If the store cannot write, the call is denied with
  ``audit_unavailable``.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Protocol

import structlog

from mcp_guard.errors import AuditError
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.types import AuditEvent, Decision, EventKind, ReasonCode

__all__ = ["EventSink", "RecordDecision", "RecordOutcome", "decision_event", "summarize_result"]

log = structlog.get_logger("mcp_guard.audit")


class EventSink(Protocol):
    async def record(self, event: AuditEvent) -> int: ...

    def record_nowait(self, event: AuditEvent) -> None: ...


def summarize_result(result: dict[str, Any]) -> dict[str, Any]:
    """is_error, size and sha256 of a result — never its content."""
    raw = json.dumps(result, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return {
        "is_error": bool(result.get("isError", False)),
        "bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


def decision_event(ctx: CallContext, decision: Decision) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.CALL_DECISION,
        session_id=ctx.session.id,
        decision_id=decision.decision_id,
        principal=ctx.principal.id,
        server=ctx.server,
        tool=ctx.target,
        decision="allow" if decision.allow else "deny",
        reasons=decision.reasons,
        arguments=ctx.audit_arguments if ctx.audit_arguments is not None else ctx.arguments,
        policy_revision=decision.revision,
        duration_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
        details={"action": ctx.action, "call_id": ctx.call_id, "obligations": dict(decision.obligations)}
        if decision.obligations
        else {"action": ctx.action, "call_id": ctx.call_id},
    )


class RecordDecision:
    def __init__(self, sink: EventSink) -> None:
        self._sink = sink

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        decision = ctx.decision
        assert decision is not None and decision.allow, "RecordDecision runs after an allow"
        try:
            await self._sink.record(decision_event(ctx, decision))
        except AuditError as e:
            log.error("audit.unavailable", error=str(e), call_id=ctx.call_id)
            return Outcome(
                decision=Decision.deny(
                    ReasonCode.AUDIT_UNAVAILABLE, "the audit store cannot record this call", revision=decision.revision
                ),
                error=None,
            )
        return await call_next(ctx)


class RecordOutcome:
    def __init__(self, sink: EventSink) -> None:
        self._sink = sink

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        outcome = await call_next(ctx)
        try:
            if outcome.denied:
                assert outcome.decision is not None
                if outcome.decision.code != ReasonCode.AUDIT_UNAVAILABLE:
                    await self._sink.record(decision_event(ctx, outcome.decision))
                return outcome
            decision = ctx.decision if ctx.decision is not None else outcome.decision
            common: dict[str, Any] = {
                "session_id": ctx.session.id,
                "decision_id": decision.decision_id if decision else None,
                "principal": ctx.principal.id,
                "server": ctx.server,
                "tool": ctx.target,
                "duration_ms": round((time.perf_counter() - ctx.started) * 1000, 3),
                "policy_revision": decision.revision if decision else None,
            }
            if outcome.error is not None:
                await self._sink.record(
                    AuditEvent(
                        kind=EventKind.CALL_ERROR,
                        **common,
                        result={"code": outcome.error.code, "message": outcome.error.message},
                        details={"action": ctx.action, "call_id": ctx.call_id},
                    )
                )
            else:
                await self._sink.record(
                    AuditEvent(
                        kind=EventKind.CALL_RESULT,
                        **common,
                        result=summarize_result(outcome.result or {}),
                        details={"action": ctx.action, "call_id": ctx.call_id},
                    )
                )
        except AuditError as e:
            log.error("audit.unavailable", error=str(e), call_id=ctx.call_id)
            if outcome.denied:
                return outcome
            return Outcome(
                decision=Decision.deny(
                    ReasonCode.AUDIT_UNAVAILABLE,
                    "the call ran but its outcome could not be recorded; result withheld",
                    revision=ctx.decision.revision if ctx.decision else None,
                )
            )
        return outcome
