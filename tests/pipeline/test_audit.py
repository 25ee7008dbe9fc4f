"""RecordDecision / RecordOutcome: every call leaves a row, and a store that is down fails the call closed.

The outcome row of a call always names the decision that governed it — also when the store was down for
the allow row (the call was then not forwarded) — and a result that cannot be recorded is withheld.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import anyio
import mcp_types as types
import pytest
from pipeline_kit import call_ctx, pipeline
from structlog.testing import capture_logs

from mcp_guard.audit.chain import json_text
from mcp_guard.audit.events import PREVIEW_CHARS, TRUNCATED_KEY, summarize_result
from mcp_guard.pipeline.context import Outcome
from mcp_guard.settings import parse_settings
from mcp_guard.testing import FunctionEngine, RecordingSink, RecordingUpstream
from mcp_guard.types import AuditEvent, Decision, EventKind, ReasonCode

pytestmark = pytest.mark.anyio

REVISION = "rev-42"
RESULT = {"content": [{"type": "text", "text": "the upstream's answer"}], "isError": False}


def _allowing() -> tuple[FunctionEngine, list[Decision]]:
    """An engine that allows with a known revision, and the decisions it made."""
    made: list[Decision] = []

    def decide(_i: Any) -> Decision:
        made.append(Decision(allow=True, reasons=("ok",), revision=REVISION))
        return made[-1]

    return FunctionEngine(decide), made


def _is_allow_row(e: AuditEvent) -> bool:
    return e.kind == EventKind.CALL_DECISION and e.decision == "allow"


# --------------------------------------------------------------------------- the store works
async def test_an_allowed_call_has_its_allow_row_then_its_result_row() -> None:
    engine, made = _allowing()
    sink = RecordingSink()
    call, upstream = pipeline(engine, sink, upstream=RecordingUpstream(Outcome(result=RESULT)))
    outcome = await call(call_ctx(arguments={"text": "hi", "password": "hunter2"}))

    assert outcome.result == RESULT and outcome.decision is made[0] and outcome.override is None
    assert len(upstream.seen) == 1
    allow, result = sink.events
    assert (allow.kind, allow.decision, allow.decision_id) == (EventKind.CALL_DECISION, "allow", made[0].decision_id)
    assert allow.arguments == {"text": "hi", "password": "[REDACTED:password]"}  # the audit copy, never raw
    assert result.kind == EventKind.CALL_RESULT
    assert (result.decision_id, result.policy_revision) == (made[0].decision_id, REVISION)
    assert result.result == summarize_result(RESULT)
    assert allow.details is not None and result.details == {"action": "tools/call", "call_id": allow.details["call_id"]}


async def test_the_calls_rows_name_the_era_its_upstream_is_spoken_to_in() -> None:
    # The decision row: the era known when the call was made; the outcome row: the era of the connection the call
    # went out on (Forward's), which a restart between the two may have changed.
    sink = RecordingSink()
    up = RecordingUpstream(Outcome(result=RESULT, upstream_protocol="stateless"))
    call, _ = pipeline(_allowing()[0], sink, upstream=up)
    await call(replace(call_ctx(), upstream_protocol="handshake"))
    assert [(e.details or {}).get("upstream_protocol") for e in sink.events] == ["handshake", "stateless"]

    sink = RecordingSink()
    call, _ = pipeline(FunctionEngine(lambda _i: Decision(allow=False, reasons=("no",))), sink)
    await call(replace(call_ctx(), upstream_protocol="stateless"))
    [deny] = sink.events
    assert deny.details is not None and deny.details["upstream_protocol"] == "stateless"

    sink = RecordingSink()
    call, _ = pipeline(_allowing()[0], sink)
    await call(call_ctx())  # an upstream whose connection was never ready: no era to name
    assert all("upstream_protocol" not in (e.details or {}) for e in sink.events)


async def test_an_upstream_error_is_a_call_error_row_naming_the_decision() -> None:
    engine, made = _allowing()
    sink = RecordingSink()
    error = types.ErrorData(code=-32001, message="upstream said no")
    call, _ = pipeline(engine, sink, upstream=RecordingUpstream(Outcome(error=error)))
    outcome = await call(call_ctx())
    assert outcome.error == error and not outcome.denied
    row = sink.events[-1]
    assert row.kind == EventKind.CALL_ERROR and row.result == {"code": -32001, "message": "upstream said no"}
    assert (row.decision_id, row.policy_revision) == (made[0].decision_id, REVISION)


async def test_a_policy_deny_is_one_deny_row_and_never_forwarded() -> None:
    deny = Decision(allow=False, reasons=("no tickets for you",), revision=REVISION)
    sink = RecordingSink()
    call, upstream = pipeline(FunctionEngine(lambda _i: deny), sink)
    outcome = await call(call_ctx())
    assert outcome.decision is deny and outcome.denial is deny and upstream.seen == []
    (row,) = sink.events
    assert (row.kind, row.decision, row.decision_id) == (EventKind.CALL_DECISION, "deny", deny.decision_id)
    assert row.reasons == ("no tickets for you",) and row.policy_revision == REVISION


# --------------------------------------------------------------------------- down before forwarding
async def test_store_down_before_forwarding_denies_and_never_forwards() -> None:
    engine, made = _allowing()
    sink = RecordingSink()
    sink.fail = True
    call, upstream = pipeline(engine, sink)
    with capture_logs() as logs:
        outcome = await call(call_ctx())

    assert upstream.seen == []  # the upstream never saw the call
    assert outcome.result is None and outcome.error is None
    # The governing decision is still the policy's allow; the deny the client gets is the override.
    allow = made[0]
    assert outcome.decision is allow
    assert outcome.denial is outcome.override and outcome.override is not None
    assert outcome.override.code == ReasonCode.AUDIT_UNAVAILABLE and not outcome.override.allow
    assert outcome.override.reasons[0] == ReasonCode.AUDIT_UNAVAILABLE
    assert (outcome.override.decision_id, outcome.override.revision) == (allow.decision_id, REVISION)
    assert sink.events == []
    # Both writes were tried (the allow row, then the deny row for the override); the log names the decision.
    assert [e.decision for e in sink.refused] == ["allow", "deny"]
    unavailable = [e for e in logs if e["event"] == "audit.unavailable"]
    assert [e["stage"] for e in unavailable] == ["decision", "outcome"]
    assert all((e["decision_id"], e["policy_revision"]) == (allow.decision_id, REVISION) for e in unavailable)


async def test_outcome_row_of_a_call_whose_allow_row_failed_names_the_governing_decision() -> None:
    """The store refuses the allow row and is back for the next write: the outcome row lands, and it carries
    the policy revision and the decision id of the allow that governed the call."""
    engine, made = _allowing()
    sink = RecordingSink()
    sink.fail_when = _is_allow_row
    call, upstream = pipeline(engine, sink)
    outcome = await call(call_ctx())

    assert upstream.seen == [] and outcome.denied
    (refused,) = sink.refused
    assert _is_allow_row(refused) and refused.decision_id == made[0].decision_id
    (row,) = sink.events
    assert (row.kind, row.decision) == (EventKind.CALL_DECISION, "deny")
    assert row.reasons is not None and row.reasons[0] == ReasonCode.AUDIT_UNAVAILABLE
    assert row.decision_id == made[0].decision_id
    assert row.policy_revision == REVISION


# --------------------------------------------------------------------------- down after forwarding
@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (Outcome(result=RESULT), EventKind.CALL_RESULT),
        (Outcome(error=types.ErrorData(code=-32001, message="upstream said no")), EventKind.CALL_ERROR),
    ],
    ids=["result", "error"],
)
async def test_store_down_after_forwarding_withholds_the_answer(answer: Outcome, kind: EventKind) -> None:
    engine, made = _allowing()
    sink = RecordingSink()
    sink.fail_when = lambda e: e.kind == kind
    call, upstream = pipeline(engine, sink, upstream=RecordingUpstream(answer))
    with capture_logs() as logs:
        outcome = await call(call_ctx())

    assert len(upstream.seen) == 1  # it ran …
    assert outcome.result is None and outcome.error is None  # … but nothing of its answer reaches the client
    assert "the upstream's answer" not in repr(outcome) and "upstream said no" not in repr(outcome)
    allow = made[0]
    assert outcome.decision is allow and outcome.override is not None
    assert outcome.override.code == ReasonCode.AUDIT_UNAVAILABLE and "withheld" in outcome.override.reasons[1]
    assert (outcome.override.decision_id, outcome.override.revision) == (allow.decision_id, REVISION)
    # The allow row was written before forwarding; the outcome row that failed named the same decision.
    (allow_row,) = sink.events
    assert _is_allow_row(allow_row) and allow_row.decision_id == allow.decision_id
    (refused,) = sink.refused
    assert refused.kind == kind and (refused.decision_id, refused.policy_revision) == (allow.decision_id, REVISION)
    (line,) = [e for e in logs if e["event"] == "audit.unavailable"]
    assert (line["stage"], line["decision_id"], line["policy_revision"]) == ("outcome", allow.decision_id, REVISION)


async def test_a_deny_whose_row_cannot_be_written_is_still_the_deny() -> None:
    deny = Decision(allow=False, reasons=("no",), revision=REVISION)
    sink = RecordingSink()
    sink.fail = True
    call, upstream = pipeline(FunctionEngine(lambda _i: deny), sink)
    with capture_logs() as logs:
        outcome = await call(call_ctx())
    assert outcome.decision is deny and outcome.override is None and upstream.seen == []
    (line,) = [e for e in logs if e["event"] == "audit.unavailable"]
    assert line["decision_id"] == deny.decision_id


# --------------------------------------------------------------------------- bounded arguments
async def test_huge_arguments_are_stored_as_size_digest_and_preview() -> None:
    engine, _ = _allowing()
    sink = RecordingSink()
    call, upstream = pipeline(engine, sink)
    huge = {"text": "x" * (10 * 1024 * 1024), "password": "hunter2"}
    await call(call_ctx(arguments=huge))
    assert upstream.seen[0].arguments == huge, "the upstream still gets the call as it was made"
    stored = sink.events[0].arguments
    assert stored is not None and set(stored) == {TRUNCATED_KEY}
    bounded = stored[TRUNCATED_KEY]
    audit_copy = json_text({"password": "[REDACTED:password]", "text": huge["text"]})
    assert audit_copy is not None
    assert bounded["bytes"] == len(audit_copy.encode()) > 10 * 1024 * 1024
    assert bounded["sha256"] == hashlib.sha256(audit_copy.encode()).hexdigest()
    assert bounded["preview"] == audit_copy[:PREVIEW_CHARS] and "hunter2" not in bounded["preview"]
    assert len(json_text(stored) or "") < 2 * PREVIEW_CHARS


async def test_the_bound_is_the_configured_one_and_applies_to_deny_rows_too() -> None:
    settings = parse_settings(
        {"upstreams": {"rec": {"command": "never-started"}}, "audit": {"max_arguments_bytes": 2048}}, source="<t>"
    )
    sink = RecordingSink()
    deny = FunctionEngine(lambda _i: Decision(allow=False, reasons=("no",)))
    call, _ = pipeline(deny, sink, settings=settings)
    await call(call_ctx(arguments={"text": "y" * 1000}))
    await call(call_ctx(arguments={"text": "é" * 1100}))  # 1,100 characters, 2,200 bytes of UTF-8
    small, large = (e.arguments for e in sink.events)
    assert small == {"text": "y" * 1000}
    assert large is not None and large[TRUNCATED_KEY]["bytes"] > 2048


# --------------------------------------------------------------------------- cancellation
async def test_a_call_cancelled_after_its_allow_row_gets_a_cancelled_row() -> None:
    engine, made = _allowing()
    sink = RecordingSink()
    started = anyio.Event()

    class Hanging(RecordingUpstream):
        async def __call__(self, ctx: Any) -> Outcome:
            started.set()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    call, _ = pipeline(engine, sink, upstream=Hanging())
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, call_ctx())
            await started.wait()
            tg.cancel_scope.cancel()
    allow, cancelled = sink.events
    assert _is_allow_row(allow) and cancelled.kind == EventKind.CALL_CANCELLED
    assert (cancelled.decision_id, cancelled.policy_revision) == (made[0].decision_id, REVISION)
    assert allow.details is not None and cancelled.details == {
        "action": "tools/call",
        "call_id": allow.details["call_id"],
    }


async def test_a_cancelled_row_that_cannot_be_written_is_logged_and_the_cancellation_goes_on() -> None:
    engine, made = _allowing()
    sink = RecordingSink()
    sink.fail_when = lambda e: e.kind == EventKind.CALL_CANCELLED
    started = anyio.Event()

    class Hanging(RecordingUpstream):
        async def __call__(self, ctx: Any) -> Outcome:
            started.set()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    call, _ = pipeline(engine, sink, upstream=Hanging())
    with capture_logs() as logs, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, call_ctx())
            await started.wait()
            tg.cancel_scope.cancel()
    assert [e.kind for e in sink.refused] == [EventKind.CALL_CANCELLED]
    unavailable = [e for e in logs if e["event"] == "audit.unavailable"]
    assert unavailable and unavailable[0]["stage"] == "cancelled"
    assert unavailable[0]["decision_id"] == made[0].decision_id
