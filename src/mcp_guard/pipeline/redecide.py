"""The policy asked again before the client's answers to an upstream's mid-call questions go upstream.

An admitted call may still ask the client things: a 2026-07-28 upstream answers ``InputRequiredResult`` and
is retried with the answers (:mod:`mcp_guard.pipeline.input_rounds`), a 2026-07-28 client answers the
questions of any upstream by retrying its request with ``inputResponses``
(:mod:`mcp_guard.frontend.input_required`), and a task's owner by ``tasks/update``
(:mod:`mcp_guard.frontend.tasks`). The answers are new input the first decision never saw (a path typed into
a form, a declined confirmation), so before a retry carries them upstream the policy is asked again: the
call's own input (``PolicyVerdict.input``, the time refreshed) plus ``input_responses``, keyed as the upstream
keyed its requests.

* **Allow**: its ``call.decision`` row is committed under the call's ``call_id`` (``details.input_round``:
  which round it decided) before the retry is sent, as the first allow is before the first attempt — one
  call, one call id, one row per decision. Its obligations must be ones the first allow carried (they were
  enforced when the call was admitted: counted, approved, labelled once); a new one cannot be enforced
  mid-call, so it refuses the call (``obligation_mid_call``).
* **Deny**: the call ends there. The retry is never sent: ``Forward`` returns the deny, and a deny the bridge
  got (from the client's retry, another task) cancels the run below this stage, the upstream request in
  flight with it. The call's outcome is the deny, recorded by ``RecordOutcome`` as
  a ``call.decision`` deny row with the round and the input it was asked about — the row a deny always
  has, so a re-decided deny is not written twice.
* Answers that arrive after the run below has ended reach no upstream and are not decided on.
* The same answers asked twice (the bridge re-decides a client's retry, then ``Forward`` retries a
  2026-07-28 upstream with exactly those answers) are decided once.

Re-decisions of one call are serialised (the bridge asks from the client's request, ``Forward`` from the
call's own run).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

import anyio
import structlog

from mcp_guard.errors import AuditError
from mcp_guard.pipeline.audit import EventSink, decision_row
from mcp_guard.pipeline.authorize import Evaluator
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome, PolicyVerdict, RedecideFn
from mcp_guard.pipeline.secret_source import SecretSource
from mcp_guard.pipeline.secrets import inspect_arguments
from mcp_guard.types import Decision, ReasonCode, utc_now

__all__ = ["Redecide", "current_redecide"]

log = structlog.get_logger("mcp_guard.pipeline")

_CURRENT: ContextVar[RedecideFn | None] = ContextVar("mcp_guard_redecide", default=None)


def current_redecide() -> RedecideFn | None:
    """The re-decision of the call this task is running below the stage (``Forward``'s; None outside one)."""
    return _CURRENT.get()


class Redecide:
    """Inside ``call_next``: the result policy, redact and the upstream, in a task where :func:`current_redecide`
    is this call's (and the bridge told it through ``ctx.on_redecide``). Reached only with the call's allow
    recorded.

    Cheap for the calls that never ask (nearly all): a context variable rather than a copied ``CallContext``
    (a ``dataclasses.replace`` of it costs ~6 µs), the lock made on the first re-decision, and a cancel scope
    only for a bridged call, whose deny comes from another task (the client's retry); ``Forward`` returns its
    own deny."""

    def __init__(self, engine: Evaluator, sink: EventSink, secrets: SecretSource, *, max_arguments_bytes: int) -> None:
        self._engine = engine
        self._sink = sink
        self._secrets = secrets
        self._max_arguments_bytes = max_arguments_bytes

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        if ctx.verdict is None or ctx.decision is None:
            return await call_next(ctx)  # nothing was asked of the policy: nothing to ask again
        rounds = _Rounds(self, ctx, ctx.verdict, ctx.decision)
        token = _CURRENT.set(rounds.decide)
        try:
            if ctx.on_redecide is None:
                outcome = await call_next(ctx)
            else:
                with anyio.CancelScope() as scope:
                    rounds.scope = scope
                    ctx.on_redecide(rounds.decide)
                    outcome = await call_next(ctx)
        finally:
            _CURRENT.reset(token)
            rounds.done = True
        return rounds.ended if rounds.ended is not None else outcome


class _Rounds:
    """The re-decisions of one admitted call."""

    __slots__ = ("_allow", "_ctx", "_first", "_last", "_lock", "_round", "_stage", "done", "ended", "scope")

    def __init__(self, stage: Redecide, ctx: CallContext, first: PolicyVerdict, allow: Decision) -> None:
        self._stage = stage
        self._ctx = ctx
        self._first = first
        self._allow = allow
        self._lock: anyio.Lock | None = None
        self._round = 0
        self._last: tuple[Mapping[str, Any], Decision] | None = None
        self.scope: anyio.CancelScope | None = None
        self.ended: Outcome | None = None  # the deny that ended the call (its outcome)
        self.done = False  # the run below has returned: too late to ask

    async def decide(self, responses: Mapping[str, dict[str, Any]]) -> Decision:
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self.ended is not None:
                return self._deny_of_ended()
            if self.done:
                return self._allow  # the run has ended: these answers reach no upstream, nothing to decide
            if self._last is not None and self._last[0] == responses:
                return self._last[1]
            self._round += 1
            decision, verdict = await self._ask(dict(responses))
            log.info(
                "call.redecided",
                call_id=self._ctx.call_id,
                input_round=self._round,
                keys=sorted(responses),
                allow=decision.allow,
            )
            if decision.allow is True:
                try:
                    await self._stage._sink.record(
                        decision_row(self._ctx, decision, self._stage._max_arguments_bytes, verdict)
                    )
                except AuditError as e:
                    log.error("audit.unavailable", stage="redecide", error=str(e), call_id=self._ctx.call_id)
                    self._end(
                        Outcome.fail_closed(
                            decision,
                            ReasonCode.AUDIT_UNAVAILABLE,
                            "the audit store cannot record the decision on this call's input responses, "
                            "so they were not forwarded",
                        )
                    )
                    return self._deny_of_ended()
                self._last = (dict(responses), decision)
                return decision
            self._end(Outcome(decision=decision, verdict=verdict))
            return decision

    async def _ask(self, responses: dict[str, dict[str, Any]]) -> tuple[Decision, PolicyVerdict]:
        asked = replace(self._first.input, input_responses=responses, time=utc_now())
        decision = await self._stage._engine.evaluate(asked)
        audit, _ = inspect_arguments(responses, self._stage._secrets.scrubber)
        verdict = PolicyVerdict(asked, decision, input_round=self._round, audit_responses=audit)
        if decision.allow is True:
            added = sorted(k for k, v in decision.obligations.items() if self._allow.obligations.get(k) != v)
            if added:
                detail = (
                    f"the decision on this call's input responses adds obligations ({', '.join(added)}) "
                    "that can only be enforced before a call is forwarded"
                )
                decision = Decision.deny(ReasonCode.OBLIGATION_MID_CALL, detail, revision=decision.revision)
        return decision, verdict

    def _end(self, outcome: Outcome) -> None:
        self.ended = outcome
        if self.scope is not None and not self.done:
            self.scope.cancel()

    def _deny_of_ended(self) -> Decision:
        assert self.ended is not None and self.ended.denial is not None
        return self.ended.denial
