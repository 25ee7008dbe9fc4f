"""EnforceObligations: every obligation key goes to its handler; one no handler knows is a recorded deny."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from pipeline_kit import call_ctx, pipeline

from mcp_guard.errors import StateError
from mcp_guard.pipeline.build import obligation_handlers
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.obligations import (
    ABSENT,
    EnforceObligations,
    ObligationHandler,
    Refusal,
    StateWrite,
    Undo,
    invalid,
)
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.state import Admit, Applied, Limit, MemoryState, Release, StateOp, StateStore
from mcp_guard.testing import FunctionEngine, RecordingSink, RecordingUpstream
from mcp_guard.types import Decision, EventKind, PolicyInput, Principal, ReasonCode, SessionInfo, ToolInfo

pytestmark = pytest.mark.anyio

BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "rego"


@dataclass
class _Handler:
    """A handler for tests: wants an int (else obligation_invalid), refuses values over ``limit``."""

    name: str
    always: bool = False
    limit: int = 10
    seen: list[object] = field(default_factory=list)

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | None:
        self.seen.append(value)
        if value is ABSENT:
            return None
        if not isinstance(value, int):
            return invalid(self.name, "an integer", value)
        if value > self.limit:
            return Refusal(ReasonCode.SECRET_NOT_GRANTED, f"{self.name} {value} is over {self.limit}")
        return None


def _allowed(**obligations: Any) -> CallContext:
    return replace(call_ctx(), decision=Decision(allow=True, obligations=obligations, revision="rev-9"))


async def _run(handlers: list[ObligationHandler], ctx: CallContext) -> tuple[Outcome, RecordingUpstream]:
    upstream = RecordingUpstream()
    return await EnforceObligations(handlers)(ctx, upstream), upstream


# --------------------------------------------------------------------------- dispatch
async def test_each_key_goes_to_its_handler_and_the_call_goes_on() -> None:
    a, b = _Handler("a"), _Handler("b")
    outcome, upstream = await _run([a, b], _allowed(a=1, b=2))
    assert not outcome.denied and len(upstream.seen) == 1
    assert (a.seen, b.seen) == ([1], [2])


async def test_a_handler_whose_key_is_absent_is_not_run_unless_it_always_runs() -> None:
    lazy, eager = _Handler("lazy"), _Handler("eager", always=True)
    outcome, upstream = await _run([lazy, eager], _allowed())
    assert not outcome.denied and len(upstream.seen) == 1
    assert lazy.seen == [] and eager.seen == [ABSENT]


async def test_unknown_keys_are_denied_before_any_handler_runs() -> None:
    known = _Handler("known", always=True)
    outcome, upstream = await _run([known], _allowed(known=1, zeta=True, approval={"reason": "x"}))
    assert upstream.seen == [] and known.seen == []
    d = outcome.decision
    assert d is not None and not d.allow and outcome.denial is d
    assert d.code == ReasonCode.OBLIGATION_UNKNOWN and d.reasons[0] == ReasonCode.OBLIGATION_UNKNOWN
    assert "'approval', 'zeta'" in d.reasons[1] and "known" not in d.reasons[1]
    assert d.revision == "rev-9"


async def test_a_malformed_value_is_obligation_invalid() -> None:
    outcome, upstream = await _run([_Handler("n")], _allowed(n="three"))
    assert upstream.seen == []
    d = outcome.decision
    assert d is not None and d.code == ReasonCode.OBLIGATION_INVALID
    assert d.reasons == (ReasonCode.OBLIGATION_INVALID, "obligations.n must be an integer, got str")
    assert d.revision == "rev-9"


async def test_handlers_run_in_order_and_the_first_refusal_stops_the_call() -> None:
    first, second = _Handler("first", limit=0), _Handler("second")
    outcome, upstream = await _run([first, second], _allowed(first=5, second=1))
    assert upstream.seen == [] and second.seen == []
    assert outcome.decision is not None and outcome.decision.reasons[1] == "first 5 is over 0"


def test_a_key_registered_twice_is_a_wiring_error() -> None:
    with pytest.raises(ValueError, match="registered twice: a"):
        EnforceObligations([_Handler("a"), _Handler("b"), _Handler("a")])


# --------------------------------------------------------------------------- in the pipeline: recorded
async def test_an_unknown_obligation_is_a_recorded_deny_and_no_allow_row() -> None:
    allow = Decision(allow=True, reasons=("ok",), obligations={"teleport": [{"to": "mars"}]}, revision="rev-9")
    sink = RecordingSink()
    call, upstream = pipeline(FunctionEngine(lambda _i: allow), sink)
    outcome = await call(call_ctx())

    assert upstream.seen == []
    assert outcome.decision is not None and outcome.decision.code == ReasonCode.OBLIGATION_UNKNOWN
    (row,) = sink.events  # the deny row only: the allow was never recorded, so no call appears allowed
    assert (row.kind, row.decision) == (EventKind.CALL_DECISION, "deny")
    assert row.reasons is not None and row.reasons[0] == ReasonCode.OBLIGATION_UNKNOWN
    assert "'teleport'" in row.reasons[1]
    assert row.decision_id == outcome.decision.decision_id and row.policy_revision == "rev-9"


async def test_a_malformed_secrets_grant_is_a_recorded_deny() -> None:
    allow = Decision(allow=True, obligations={"secrets": "tickets_token"}, revision="rev-9")
    sink = RecordingSink()
    call, upstream = pipeline(FunctionEngine(lambda _i: allow), sink)
    outcome = await call(call_ctx())
    assert upstream.seen == [] and outcome.decision is not None
    assert outcome.decision.code == ReasonCode.OBLIGATION_INVALID
    (row,) = sink.events
    assert row.decision == "deny" and row.reasons is not None and row.reasons[0] == ReasonCode.OBLIGATION_INVALID


# --------------------------------------------------------------------------- the default bundle
@pytest.mark.parametrize(
    ("principal", "roles", "server", "tool"),
    [
        ("alice", ("support",), "tickets", "get_ticket"),
        ("bob", ("analyst",), "warehouse", "query"),
        ("carol", (), "time", "get_current_time"),
    ],
)
async def test_every_obligation_the_default_bundle_emits_has_a_handler(
    principal: str, roles: tuple[str, ...], server: str, tool: str
) -> None:
    engine = EmbeddedEngine(load_bundle(BUNDLE))
    d = await engine.evaluate(
        PolicyInput(
            action="tools/call",
            principal=Principal(principal, roles),
            session=SessionInfo("s", "stdio"),
            server=server,
            tool=tool,
            arguments={"sql": "SELECT 1"} if tool == "query" else {},
            tool_info=ToolInfo(annotations={"readOnlyHint": True}),
        )
    )
    assert d.allow is True, d.reasons
    handlers = obligation_handlers(NO_SECRETS, MemoryState())
    known = {h.name for h in handlers}
    assert set(d.obligations) <= known, f"the default bundle emits {sorted(set(d.obligations) - known)}"
    assert "rate_limit" in d.obligations  # the default bundle limits every principal per tool
    ctx = replace(call_ctx(server=server, tool=tool), decision=d)
    outcome, upstream = await _run(handlers, ctx)
    assert not outcome.denied and len(upstream.seen) == 1


# --------------------------------------------------------------------------- undo
@dataclass
class _Counts:
    """A handler with an effect (like the rate limiter): it counts the call and can take it back."""

    name: str = "counts"
    always: bool = True
    counted: int = 0

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | Undo | None:
        self.counted += 1

        async def take_back() -> None:
            self.counted -= 1

        return Undo(take_back)


async def test_an_effect_stays_when_the_call_is_forwarded() -> None:
    counts = _Counts()
    outcome, upstream = await _run([counts], _allowed())
    assert not outcome.denied and len(upstream.seen) == 1 and counts.counted == 1


async def test_an_effect_is_taken_back_when_a_later_handler_refuses() -> None:
    counts = _Counts()
    outcome, upstream = await _run([counts, _Handler("n", limit=0)], _allowed(n=1))
    assert outcome.denied and upstream.seen == [] and counts.counted == 0


async def test_an_effect_is_taken_back_when_the_allow_cannot_be_recorded() -> None:
    counts = _Counts()
    not_recorded = Outcome.fail_closed(Decision(allow=True), ReasonCode.AUDIT_UNAVAILABLE, "store down")
    outcome = await EnforceObligations([counts])(_allowed(), RecordingUpstream(not_recorded))
    assert outcome.denied and counts.counted == 0


# --------------------------------------------------------------------------- the state batch
class _Batches(MemoryState):
    """A memory store that keeps the batches it was given (and can be made to fail)."""

    def __init__(self, *, down: bool = False) -> None:
        super().__init__()
        self.batches: list[list[StateOp]] = []
        self.down = down

    async def apply(self, ops: Sequence[StateOp]) -> Applied:
        self.batches.append(list(ops))
        if self.down:
            raise StateError("the state store cannot answer", cause="disk I/O error")
        return await super().apply(ops)


@dataclass
class _Writes:
    """A handler whose condition is a state write: it admits the call against ``limit`` (a new obligation kind
    plugging into the call's one batch)."""

    store: StateStore
    name: str
    limit: int = 5
    always: bool = True

    async def enforce(self, ctx: CallContext, value: object) -> StateWrite:
        return StateWrite(
            self.store,
            (Admit((Limit(self.name, self.limit, 60.0),)),),
            lambda _r: Refusal(ReasonCode.RATE_LIMITED, f"{self.name} is full"),
            lambda e: Refusal(ReasonCode.STATE_UNAVAILABLE, f"{self.name} cannot be counted ({e.cause})"),
        )


async def test_every_state_write_of_a_call_is_one_batch_in_handler_order() -> None:
    store = _Batches()
    outcome, upstream = await _run([_Writes(store, "a"), _Handler("n"), _Writes(store, "b")], _allowed(n=1))
    assert not outcome.denied and len(upstream.seen) == 1
    assert [[op.limits[0].key for op in batch if isinstance(op, Admit)] for batch in store.batches] == [["a", "b"]]


async def test_a_refused_op_rolls_back_the_batch_and_its_handler_refuses() -> None:
    store = _Batches()
    await store.admit([Limit("b", 1, 60.0)])
    outcome, upstream = await _run([_Writes(store, "a"), _Writes(store, "b", limit=1)], _allowed())
    d = outcome.denial
    assert d is not None and d.code == ReasonCode.RATE_LIMITED and "b is full" in d.reasons[1] and upstream.seen == []
    assert await store.usage([("a", 60.0), ("b", 60.0)]) == {("a", 60.0): 0, ("b", 60.0): 1}  # "a" rolled back


async def test_a_handler_refusing_before_the_batch_leaves_the_store_untouched() -> None:
    store = _Batches()
    outcome, _ = await _run([_Writes(store, "a"), _Handler("n", limit=0)], _allowed(n=1))
    assert outcome.denied and store.batches == []


async def test_a_store_that_cannot_answer_denies_with_the_first_writer_reason() -> None:
    store = _Batches(down=True)
    outcome, upstream = await _run([_Writes(store, "a"), _Writes(store, "b")], _allowed())
    d = outcome.denial
    assert d is not None and d.code == ReasonCode.STATE_UNAVAILABLE and upstream.seen == []
    assert "a cannot be counted (disk I/O error)" in d.reasons[1]


async def test_a_call_not_forwarded_takes_the_batch_back_as_one_batch() -> None:
    store = _Batches()
    not_recorded = Outcome.fail_closed(Decision(allow=True), ReasonCode.AUDIT_UNAVAILABLE, "store down")
    enforce = EnforceObligations([_Writes(store, "a"), _Writes(store, "b")])
    outcome = await enforce(_allowed(), RecordingUpstream(not_recorded))
    assert outcome.denied and len(store.batches) == 2
    assert [type(op) for op in store.batches[1]] == [Release, Release]
    assert await store.usage([("a", 60.0), ("b", 60.0)]) == {("a", 60.0): 0, ("b", 60.0): 0}


async def test_handlers_writing_to_two_stores_are_a_wiring_error() -> None:
    with pytest.raises(ValueError, match="different state stores"):
        await _run([_Writes(_Batches(), "a"), _Writes(_Batches(), "b")], _allowed())
