"""The obligations stage: every key of ``decision.obligations`` is enforced by its handler, or the call is denied.

An allow from policy may come with obligations (docs/architecture.md §8.4: ``secrets``, later ``approval``,
``rate_limit``, ``labels``, ``redact``, ``upstream_scopes``). An obligation is a condition of the allow,
so one that mcp-guard cannot enforce must not be dropped silently: :class:`EnforceObligations` hands
each key to the :class:`ObligationHandler` registered under that name and

* denies with ``obligation_unknown`` (naming the keys) when a key has no handler — before any handler
  runs, so nothing is done for a call that will not happen;
* denies with whatever :class:`Refusal` a handler returns — ``obligation_invalid`` for a malformed value,
  or the handler's own code (``secret_not_granted``, …);
* runs a handler whose :attr:`~ObligationHandler.always` is true even when its key is absent (it is then
  given :data:`ABSENT`): the secrets handler must refuse an upstream that runs with injected credentials
  when the decision grants none.

Handlers run in registration order and the first refusal stops the call. The deny replaces the allow
as the call's governing decision (no allow row was written yet: this stage runs before
``RecordDecision``), carries the policy revision, and is recorded by ``RecordOutcome`` like every deny.

A handler that lets the call through *and changes shared state for it* (the rate limiter counts the
call) returns an :class:`Undo` instead of None. The undos are run, last first, when the call is not
forwarded after all: a later handler refuses it, or ``RecordDecision`` cannot record the allow
(its ``audit_unavailable`` override — inside this stage nothing else stops a call before the upstream).
A call that was forwarded keeps its effects, whatever the upstream answered; so does a cancelled call
(it may have reached the upstream). An undo never raises: it logs its own failure.

Adding an obligation = one small module with a handler class, and one entry in
:func:`mcp_guard.pipeline.build.obligation_handlers`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Protocol

import structlog

from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.types import Decision, ReasonCode

__all__ = ["ABSENT", "EnforceObligations", "ObligationHandler", "Refusal", "Undo", "invalid"]

log = structlog.get_logger("mcp_guard.obligations")


class _Absent(Enum):
    ABSENT = "absent"


ABSENT: Final = _Absent.ABSENT
"""The value an ``always`` handler is given when the decision does not carry its key."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a handler will not let the call go on: a fail-closed reason code and detail for the agent."""

    code: ReasonCode
    detail: str


@dataclass(frozen=True, slots=True)
class Undo:
    """A handler let the call through and did something for it; ``run`` takes it back if the call is not
    forwarded after all. ``run`` never raises."""

    run: Callable[[], Awaitable[None]]


class ObligationHandler(Protocol):
    """Enforces one obligation key. ``enforce`` returns None to let the call go on, an :class:`Undo` to let it
    go on with an effect to take back if it is not forwarded, or a :class:`Refusal`."""

    @property
    def name(self) -> str:
        """The key of ``decision.obligations`` this handler enforces."""
        ...

    @property
    def always(self) -> bool:
        """Run even when the key is absent (then ``value`` is :data:`ABSENT`)."""
        ...

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | Undo | None: ...


def invalid(name: str, expected: str, value: object) -> Refusal:
    """The refusal for a malformed obligation value (a policy bug: fail closed and say what was expected)."""
    return Refusal(ReasonCode.OBLIGATION_INVALID, f"obligations.{name} must be {expected}, got {type(value).__name__}")


class EnforceObligations:
    """Inside ``call_next``: ``RecordDecision`` → ``ResultPolicy`` → ``Redact`` → ``Forward`` — reached only if
    every obligation of the allow (``ctx.decision``) is known and its handler, and every ``always`` handler, let
    it through."""

    def __init__(self, handlers: Sequence[ObligationHandler]) -> None:
        twice = sorted(name for name, n in Counter(h.name for h in handlers).items() if n > 1)
        if twice:
            raise ValueError(f"obligation handlers registered twice: {', '.join(twice)}")
        self._handlers = tuple(handlers)
        self._known = frozenset(h.name for h in handlers)

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Outcome:
        decision = ctx.decision
        assert decision is not None and decision.allow, "EnforceObligations runs after an allow"
        refusal, undos = await self._check(ctx, decision)
        if refusal is None:
            outcome = await call_next(ctx)
            if _not_forwarded(outcome):
                await _undo(undos)
            return outcome
        log.warning(
            "obligation.refused",
            code=str(refusal.code),
            detail=refusal.detail,
            call_id=ctx.call_id,
            policy_decision_id=decision.decision_id,
            policy_revision=decision.revision,
        )
        return Outcome(decision=Decision.deny(refusal.code, refusal.detail, revision=decision.revision))

    async def _check(self, ctx: CallContext, decision: Decision) -> tuple[Refusal | None, list[Undo]]:
        unknown = sorted(set(decision.obligations) - self._known)
        if unknown:
            names = ", ".join(repr(k) for k in unknown)
            return Refusal(
                ReasonCode.OBLIGATION_UNKNOWN,
                f"the policy decision carries obligation(s) {names} that mcp-guard has no handler for",
            ), []
        undos: list[Undo] = []
        for handler in self._handlers:
            if handler.name in decision.obligations:
                value: object = decision.obligations[handler.name]
            elif handler.always:
                value = ABSENT
            else:
                continue
            result = await handler.enforce(ctx, value)
            if isinstance(result, Refusal):
                await _undo(undos)
                return result, []
            if result is not None:
                undos.append(result)
        return None, undos


def _not_forwarded(outcome: Outcome) -> bool:
    """Whether a call the obligations let through was stopped before the upstream: RecordDecision's override, or
    a deny made inside this stage before the allow was recorded (the token exchange's, mcp_guard.pipeline.exchange;
    nothing past RecordDecision returns a denying governing decision)."""
    if outcome.override is not None and outcome.override.code is ReasonCode.AUDIT_UNAVAILABLE:
        return True
    return outcome.override is None and outcome.decision is not None and not outcome.decision.allow


async def _undo(undos: Sequence[Undo]) -> None:
    for undo in reversed(undos):
        await undo.run()
