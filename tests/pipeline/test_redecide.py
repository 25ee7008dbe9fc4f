"""The policy asked again on an admitted call's input responses (mcp_guard.pipeline.redecide), in the real stage
order: an allow is recorded under the call's id before the answers go on, a deny ends the call (its outcome row)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import anyio
import pytest
from pipeline_kit import call_ctx, pipeline

from mcp_guard.pipeline.context import CallContext, Outcome, RedecideFn
from mcp_guard.pipeline.redecide import current_redecide
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision, EventKind, PolicyInput, ReasonCode

pytestmark = pytest.mark.anyio

OK = {"content": [{"type": "text", "text": "ok"}], "isError": False}


def answer(name: str) -> dict[str, dict[str, Any]]:
    return {"user_name": {"action": "accept", "content": {"name": name}}}


def no_mallory(i: PolicyInput) -> Decision:
    """Allow, but not a call whose client answered "Mallory" (a rule reading the input responses)."""
    names = [r.get("content", {}).get("name") for r in (i.input_responses or {}).values()]
    if "Mallory" in names:
        return Decision(allow=False, reasons=("Mallory may not be named",), revision="r1")
    return Decision(allow=True, reasons=("ok",), revision="r1", obligations={"labels": ["private"]})


class Upstream:
    """The end of the chain playing Forward with a 2026-07-28 upstream: rounds of answers, each retry put to the
    call's re-decision first (as Forward does, in the call's own task)."""

    def __init__(self, answers: list[dict[str, dict[str, Any]]]) -> None:
        self.answers = answers
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, ctx: CallContext) -> Outcome:
        redecide = current_redecide()
        assert redecide is not None
        for a in self.answers:
            decision = await redecide(a)
            if not decision.allow:
                return Outcome(decision=decision)
            self.sent.append(a)
        return Outcome(result=OK)


def rows(sink: RecordingSink) -> list[tuple[str, str | None, int | None]]:
    return [(e.kind, e.decision, (e.details or {}).get("input_round")) for e in sink.events]


async def test_an_allowed_answer_is_recorded_under_the_call_id_before_it_goes_on() -> None:
    engine, sink = FunctionEngine(no_mallory), RecordingSink()
    up = Upstream([answer("Ada")])
    call, _ = pipeline(engine, sink, upstream=up)  # type: ignore[arg-type]
    ctx = call_ctx()
    outcome = await call(ctx)
    assert outcome.result == OK and up.sent == [answer("Ada")]
    assert rows(sink) == [
        (EventKind.CALL_DECISION, "allow", None),
        (EventKind.CALL_DECISION, "allow", 1),
        (EventKind.CALL_RESULT, None, None),
    ]
    assert {e.details["call_id"] for e in sink.events if e.details} == {ctx.call_id}
    assert engine.inputs[0].input_responses is None and engine.inputs[1].input_responses == answer("Ada")
    assert engine.inputs[1].arguments == engine.inputs[0].arguments  # the same question, plus the answers
    recorded = json.loads(sink.events[1].details["policy"]["input_json"])  # type: ignore[index]
    assert recorded["input_responses"] == answer("Ada")


async def test_a_denied_answer_ends_the_call_with_the_deny_as_its_outcome() -> None:
    engine, sink = FunctionEngine(no_mallory), RecordingSink()
    up = Upstream([answer("Ada"), answer("Mallory"), answer("Eve")])
    call, _ = pipeline(engine, sink, upstream=up)  # type: ignore[arg-type]
    outcome = await call(call_ctx())
    assert outcome.denial is not None and outcome.denial.reasons == ("Mallory may not be named",)
    assert up.sent == [answer("Ada")], "the denied answers never went on, and nothing after them"
    assert rows(sink) == [
        (EventKind.CALL_DECISION, "allow", None),
        (EventKind.CALL_DECISION, "allow", 1),
        (EventKind.CALL_DECISION, "deny", 2),  # the outcome row: the deny, with the round it decided
    ]
    assert outcome.verdict is not None and outcome.verdict.input.input_responses == answer("Mallory")


async def test_the_bridge_is_told_the_redecision_and_its_deny_ends_the_run() -> None:
    engine, sink = FunctionEngine(no_mallory), RecordingSink()
    told: list[RedecideFn] = []
    running, cancelled = anyio.Event(), anyio.Event()

    async def in_flight(ctx: CallContext) -> Outcome:
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    call, _ = pipeline(engine, sink, upstream=in_flight)  # type: ignore[arg-type]
    result: list[Outcome] = []

    async def run() -> None:
        result.append(await call(replace(call_ctx(), on_redecide=told.append)))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await running.wait()
            [redecide] = told
            assert (await redecide(answer("Ada"))).allow
            assert not (await redecide(answer("Mallory"))).allow
    [outcome] = result
    assert cancelled.is_set(), "the upstream request in flight was cancelled"
    assert outcome.denial is not None and outcome.denial.reasons == ("Mallory may not be named",)
    assert [r[2] for r in rows(sink)] == [None, 1, 2]
    assert EventKind.CALL_CANCELLED not in sink.kinds(), "a call ended by the policy is a deny, not a cancellation"
    assert current_redecide() is None, "nothing of the call outlives it"


async def test_the_same_answers_are_decided_once() -> None:
    engine, sink = FunctionEngine(no_mallory), RecordingSink()
    up = Upstream([answer("Ada"), answer("Ada")])
    call, _ = pipeline(engine, sink, upstream=up)  # type: ignore[arg-type]
    await call(call_ctx())
    assert len(engine.inputs) == 2 and len(up.sent) == 2
    assert [r[2] for r in rows(sink)] == [None, 1, None]


async def test_an_obligation_the_first_allow_did_not_carry_refuses_the_call() -> None:
    def more(i: PolicyInput) -> Decision:
        extra = {"labels": ["private", "untrusted"]} if i.input_responses else {}
        return Decision(allow=True, revision="r1", obligations=extra)

    sink = RecordingSink()
    up = Upstream([answer("Ada")])
    call, _ = pipeline(FunctionEngine(more), sink, upstream=up)  # type: ignore[arg-type]
    outcome = await call(call_ctx())
    assert outcome.denial is not None and outcome.denial.code is ReasonCode.OBLIGATION_MID_CALL
    assert "labels" in outcome.denial.reasons[1] and up.sent == []


async def test_an_answer_whose_allow_cannot_be_recorded_does_not_go_on() -> None:
    engine, sink = FunctionEngine(no_mallory), RecordingSink()
    sink.fail_when = lambda e: (e.details or {}).get("input_round") == 1 and e.decision == "allow"
    up = Upstream([answer("Ada")])
    call, _ = pipeline(engine, sink, upstream=up)  # type: ignore[arg-type]
    outcome = await call(call_ctx())
    assert outcome.denial is not None and outcome.denial.code is ReasonCode.AUDIT_UNAVAILABLE and up.sent == []


async def test_answers_are_masked_in_the_recorded_input() -> None:
    engine, sink = FunctionEngine(no_mallory), RecordingSink()
    key = "AKIAIOSFODNN7EXAMPLE"
    up = Upstream([{"k": {"action": "accept", "content": {"aws": key}}}])
    call, _ = pipeline(engine, sink, upstream=up)  # type: ignore[arg-type]
    await call(call_ctx())
    assert engine.inputs[1].input_responses == {"k": {"action": "accept", "content": {"aws": key}}}  # policy: raw
    assert key not in sink.events[1].details["policy"]["input_json"]  # type: ignore[index]
