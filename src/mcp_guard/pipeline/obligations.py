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

A handler whose condition is a write to the shared state store (``rate_limit`` counts the call, ``labels``
records it in its flow) does not write: it returns a :class:`StateWrite` — its ops for the call's **one
state batch**. Once every handler has let the call through, the stage commits the batch with
:meth:`~mcp_guard.state.base.StateStore.apply`: one transaction (one ``BEGIN IMMEDIATE`` on SQLite, one
transaction on PostgreSQL) holding every handler's ops in handler order. Inside it, each op checks and
writes; the first refused op (a full limit, a full flow) rolls the whole batch back and its handler's
:attr:`StateWrite.refused` is the call's refusal — so a call refused by its rate limit leaves no flow
record, and one refused by its flow is not counted. A store that cannot answer (StateError) keeps nothing
of the batch; the :attr:`StateWrite.failed` of the handler whose op failed (when the store can tell,
:class:`~mcp_guard.state.base.OpFailed`; else the first contributing handler's) is the refusal
(``state_unavailable``). A handler refusing before the batch means no state is touched at all. A
new kind of obligation that needs shared state adds its op to :data:`~mcp_guard.state.base.StateOp`
and returns a StateWrite: it joins the same transaction.

A handler that lets the call through *and does something else that must be taken back* if the call does
not go on returns an :class:`Undo`. The undos — and the committed state batch, taken back as one batch
of inverse ops (:func:`~mcp_guard.state.base.undo_ops`) — are run, last first, when the call is not
forwarded after all: a later handler refuses it, or ``RecordDecision`` cannot record the allow (its
``audit_unavailable`` override — inside this stage nothing else stops a call before the upstream). A
call that was forwarded keeps its effects, whatever the upstream answered; so does a cancelled call (it
may have reached the upstream). An undo never raises: it logs its own failure (a batch that cannot be
taken back leaves the call counted and its labels on: stricter, never looser).

Adding an obligation = one small module with a handler class, and one entry in
:func:`mcp_guard.pipeline.build.obligation_handlers`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Final, Protocol, runtime_checkable

import structlog

from mcp_guard.errors import StateError
from mcp_guard.pipeline.context import CallContext, CallNext, Outcome
from mcp_guard.state.base import OpFailed, OpResult, StateOp, StateStore, is_refusal, undo_ops
from mcp_guard.types import Decision, ReasonCode

__all__ = ["ABSENT", "EnforceObligations", "ObligationHandler", "Refusal", "StateWrite", "Undo", "invalid"]

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


@dataclass(frozen=True, slots=True)
class StateWrite:
    """A handler lets the call through if ``ops`` can be applied to ``store`` in the call's one state batch.

    ``refused(result)`` is the refusal for one of its ops' refused results (the batch was rolled back);
    ``failed(error)`` the refusal when the store cannot answer (it logs the error). Both are called at most once."""

    store: StateStore
    ops: tuple[StateOp, ...]
    refused: Callable[[OpResult], Refusal]
    failed: Callable[[StateError], Refusal]


class ObligationHandler(Protocol):
    """Enforces one obligation key. ``enforce`` returns None to let the call go on, a :class:`StateWrite` to let it
    go on if its writes to shared state succeed, an :class:`Undo` to let it go on with an effect to take back if
    it is not forwarded, or a :class:`Refusal`."""

    @property
    def name(self) -> str:
        """The key of ``decision.obligations`` this handler enforces."""
        ...

    @property
    def always(self) -> bool:
        """Run even when the key is absent (then ``value`` is :data:`ABSENT`)."""
        ...

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | StateWrite | Undo | None: ...


@runtime_checkable
class _AsUsed(Protocol):
    def as_used(self) -> ObligationHandler: ...


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

    def as_used(self) -> EnforceObligations:
        """The stage with each handler as the current bundle needs it (:mod:`mcp_guard.pipeline.in_use`): a handler
        may stop running for an absent key (``labels`` without flows). None is ever left out — a key without
        its handler would become ``obligation_unknown`` — and a key that arrives is handled as before."""
        handlers = tuple(h.as_used() if isinstance(h, _AsUsed) else h for h in self._handlers)
        if all(a is b for a, b in zip(handlers, self._handlers, strict=True)):
            return self
        return EnforceObligations(handlers)

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
        writes: list[StateWrite] = []
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
            if isinstance(result, StateWrite):
                writes.append(result)
            elif result is not None:
                undos.append(result)
        refusal = await _commit(ctx, writes, undos) if writes else None
        if refusal is not None:
            await _undo(undos)
            return refusal, []
        return None, undos


async def _commit(ctx: CallContext, writes: Sequence[StateWrite], undos: list[Undo]) -> Refusal | None:
    """Apply every handler's ops as one batch (see the module docstring): the refusal of the handler whose op was
    refused, or whose store failed; else None, with the batch's undo appended to ``undos``."""
    store = writes[0].store
    if any(w.store is not store for w in writes):
        raise ValueError("obligation handlers write to different state stores: one call's writes are one batch")
    owners = [w for w in writes for _ in w.ops]
    try:
        applied = await store.apply([op for w in writes for op in w.ops])
    except StateError as e:  # the op's own handler answers when the store says which op failed, else the first
        return (owners[e.at] if isinstance(e, OpFailed) and e.at < len(owners) else writes[0]).failed(e)
    if not applied.committed:
        refused = applied.results[-1]
        assert is_refusal(refused)
        return owners[len(applied.results) - 1].refused(refused)
    take_back = undo_ops(applied.results)
    if take_back:
        undos.append(Undo(partial(_take_back, ctx, store, take_back)))
    return None


async def _take_back(ctx: CallContext, store: StateStore, ops: Sequence[StateOp]) -> None:
    """Take a committed batch back, as one batch (an undo never raises: a failure leaves the call counted and its
    flow labelled — stricter, never looser)."""
    kinds = [type(op).__name__ for op in ops]
    try:
        await store.apply(ops)
    except StateError as e:
        log.warning("obligation.state_not_taken_back", error=str(e), call_id=ctx.call_id, ops=kinds)
    else:
        log.info("obligation.state_taken_back", call_id=ctx.call_id, ops=kinds)


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
