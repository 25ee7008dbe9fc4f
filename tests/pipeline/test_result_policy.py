"""The result policy stage through the real stage order: what the policy is asked about a result, allow with
redaction and labels, withholding (the policy's deny, engine failures, obligations it cannot meet) and what
each leaves in the audit trail and the flow; when it is off, and which calls it never touches."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from pipeline_kit import call_ctx, pipeline

from mcp_guard.errors import StateError
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.flow import flow_ref
from mcp_guard.pipeline.result_policy import ResultUse, bundle_uses_results, result_document
from mcp_guard.pipeline.result_redact import MARKER
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.secrets.redact import Scrubber
from mcp_guard.settings import parse_settings
from mcp_guard.state import FlowCall, FlowRef, FlowTicket, MemoryState
from mcp_guard.testing import FunctionEngine, RecordingSink, RecordingUpstream
from mcp_guard.types import Decision, EventKind, PolicyInput, ReasonCode
from mcp_guard.upstream.connection import Injections

pytestmark = pytest.mark.anyio

ON = parse_settings({"upstreams": {"rec": {"command": "never-started"}}, "policy": {"result_policy": True}}, source="t")
OFF = parse_settings({"upstreams": {"rec": {"command": "never-started"}}}, source="t")
CARD = "4111111111111111"
SECRET = "tkt_injected-secret-value-0042"


def text_result(*texts: str, structured: Mapping[str, Any] | None = None, is_error: bool = False) -> Outcome:
    result: dict[str, Any] = {"content": [{"type": "text", "text": t} for t in texts], "isError": is_error}
    if structured is not None:
        result["structuredContent"] = dict(structured)
    return Outcome(result=result)


def engine(on_result: Callable[[PolicyInput], Decision]) -> FunctionEngine:
    """Allow every call; decide results with ``on_result``."""

    def decide(i: PolicyInput) -> Decision:
        if i.action == "tools/result":
            return on_result(i)
        return Decision(allow=True, reasons=("call ok",), revision="r1")

    return FunctionEngine(decide)


def allow(**obligations: Any) -> Callable[[PolicyInput], Decision]:
    return lambda _i: Decision(allow=True, reasons=("result ok",), obligations=obligations, revision="r1")


def result_inputs(e: FunctionEngine) -> list[PolicyInput]:
    return [i for i in e.inputs if i.action == "tools/result"]


async def run(
    e: FunctionEngine,
    outcome: Outcome,
    *,
    ctx: CallContext | None = None,
    state: MemoryState | None = None,
    settings: Any = ON,
    secrets: Any = None,
) -> tuple[Outcome, RecordingSink]:
    sink = RecordingSink()
    kw: dict[str, Any] = {"secrets": secrets} if secrets is not None else {}
    call, _up = pipeline(e, sink, settings=settings, upstream=RecordingUpstream(outcome), state=state, **kw)
    return await call(ctx or call_ctx()), sink


def only(sink: RecordingSink, kind: EventKind) -> Any:
    rows = sink.of_kind(kind)
    assert len(rows) == 1, sink.kinds()
    return rows[0]


# ---------------------------------------------------------------------- what the policy is asked
async def test_the_policy_sees_the_result_with_the_calls_fields_and_the_audit_copy_of_arguments() -> None:
    e = engine(allow())
    ctx = call_ctx(arguments={"text": "hi", "token": "ghp_" + "a" * 36})
    await run(e, text_result("hello", structured={"n": 1}), ctx=ctx)
    (asked,) = result_inputs(e)
    doc = asked.to_dict()
    assert doc["action"] == "tools/result"
    assert (doc["server"], doc["tool"], doc["principal"]["id"]) == ("rec", "echo", "alice")
    assert doc["result"] == {
        "is_error": False,
        "content": [{"type": "text", "text": "hello"}],
        "structured_content": {"n": 1},
        "truncated": False,
    }
    assert doc["arguments"]["text"] == "hi"
    assert "a" * 36 not in str(doc["arguments"]), "the result policy gets the audit copy (credential shapes masked)"


async def test_injected_secrets_are_scrubbed_before_the_policy_sees_the_result() -> None:
    class Secrets:
        scrubber = Scrubber([("tok", SECRET)])

        def secret_names_for(self, upstream: str) -> set[str]:
            return set()

        async def injections_for(self, upstream: str) -> Injections:
            return Injections()

    e = engine(allow())
    out, _sink = await run(e, text_result(f"token is {SECRET}"), secrets=Secrets())
    (asked,) = result_inputs(e)
    assert SECRET not in str(asked.to_dict())
    assert SECRET not in str(out.result)


def test_the_result_document_is_bounded_and_says_when_it_was_cut() -> None:
    result = {
        "content": [
            {"type": "text", "text": "é" * 600},  # 1200 bytes of UTF-8
            {"type": "image", "data": "QUJD" * 1000, "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "rec://x", "mimeType": "text/plain", "text": "more"}},
        ],
        "structuredContent": {"blob": "x" * 2000},
        "isError": True,
    }
    doc = result_document(result, 1024)
    assert doc["is_error"] is True
    first, image, resource = doc["content"]
    assert first["text"] == "é" * 512, "cut at a character boundary within 1024 bytes"
    assert image == {"type": "image", "mimeType": "image/png"}, "binary payloads are never passed"
    assert resource == {"type": "resource", "uri": "rec://x", "mimeType": "text/plain", "text": ""}
    assert doc["structured_content"] is None
    assert doc["truncated"] is True
    small = result_document({"content": [{"type": "text", "text": "ok"}], "structuredContent": {"a": 1}}, 1024)
    assert small["truncated"] is False and small["structured_content"] == {"a": 1}


# ---------------------------------------------------------------------- allow: redaction
async def test_redact_replaces_pointers_their_mirrors_and_pattern_matches() -> None:
    pointers = ["/structuredContent/card", "/structuredContent/holder/1"]
    e = engine(allow(redact={"pointers": pointers, "patterns": ["[0-9]{13,19}"]}))
    structured = {"card": "5500-0000-0000-0004", "holder": ["Ann", "Ann Example"], "note": f"backup {CARD}"}
    mirrored = '{"card": "5500-0000-0000-0004", "holder": "Ann Example"}'
    upstream = text_result(f"{mirrored} and {CARD}", structured=structured)
    out, sink = await run(e, upstream)
    assert out.result is not None and not out.denied
    text = out.result["content"][0]["text"]
    assert "5500-0000-0000-0004" not in text and "Ann Example" not in text and CARD not in text
    assert out.result["structuredContent"] == {"card": MARKER, "holder": ["Ann", MARKER], "note": f"backup {MARKER}"}
    row = only(sink, EventKind.CALL_RESULT)
    assert row.result["redacted"] == {"pointers": 2, "mirrors": 2, "patterns": 2}
    assert row.decision is None and "withheld" not in row.result
    rd = row.details["result_decision"]
    assert rd["allow"] is True and rd["decision_id"] != row.decision_id
    assert rd["obligations"]["redact"]["patterns"] == ["[0-9]{13,19}"]


async def test_a_pointer_that_names_nothing_changes_nothing() -> None:
    e = engine(allow(redact={"pointers": ["/structuredContent/absent", "/structuredContent/list/7"]}))
    out, sink = await run(e, text_result("plain", structured={"list": [1]}))
    assert out.result is not None
    assert out.result["structuredContent"] == {"list": [1]} and out.result["content"][0]["text"] == "plain"
    assert only(sink, EventKind.CALL_RESULT).result["redacted"] == {"pointers": 0, "mirrors": 0, "patterns": 0}


async def test_an_allow_without_obligations_passes_the_result_as_it_came() -> None:
    e = engine(allow())
    upstream = text_result("as is")
    out, sink = await run(e, upstream)
    assert out.result == upstream.result
    row = only(sink, EventKind.CALL_RESULT)
    assert "redacted" not in row.result and row.details["result_decision"]["allow"] is True


# ---------------------------------------------------------------------- deny: withheld
async def test_a_denied_result_is_withheld_naming_the_call_decision_and_recorded_as_withheld() -> None:
    e = engine(lambda _i: Decision(allow=False, reasons=("customer data",), revision="r2"))
    out, sink = await run(e, text_result("the customer's data"))
    assert out.result is None
    denial = out.denial
    assert denial is not None and denial.code is ReasonCode.RESULT_WITHHELD
    assert denial.reasons == ("result_withheld", "customer data")
    assert out.decision is not None and out.decision.allow, "the governing decision stays the call's allow"
    assert denial.decision_id == out.decision.decision_id
    allow_row = only(sink, EventKind.CALL_DECISION)
    assert allow_row.decision == "allow", "the call ran: its allow row stands and no deny row follows"
    row = only(sink, EventKind.CALL_RESULT)
    assert row.decision == "deny" and row.decision_id == allow_row.decision_id
    assert row.reasons == ("result_withheld", "customer data")
    assert row.result["withheld"] is True and row.result["is_error"] is False and row.result["bytes"] > 0
    assert "the customer's data" not in str(row)
    assert row.policy_revision == "r2"
    assert row.details["result_decision"]["allow"] is False


@pytest.mark.parametrize(
    "code", [ReasonCode.ENGINE_ERROR, ReasonCode.TIMEOUT, ReasonCode.POLICY_UNDEFINED, ReasonCode.RESULT_INVALID]
)
async def test_an_engine_failure_withholds_the_result_with_its_reason(code: ReasonCode) -> None:
    e = engine(lambda _i: Decision.deny(code, "the engine said so", revision="r1"))
    out, sink = await run(e, text_result("anything"))
    denial = out.denial
    assert out.result is None and denial is not None and denial.code is code
    assert denial.reasons[0] == str(code) and "the engine said so" in denial.reasons
    assert any("withholds its result" in r for r in denial.reasons)
    assert only(sink, EventKind.CALL_RESULT).result["withheld"] is True


@pytest.mark.parametrize(
    ("obligations", "code", "says"),
    [
        ({"secrets": []}, ReasonCode.OBLIGATION_UNKNOWN, "'secrets'"),
        ({"redact": {"patterns": ["(unclosed"]}}, ReasonCode.OBLIGATION_INVALID, "not a valid regular expression"),
        ({"redact": {"patterns": ["(a+)+$"]}}, ReasonCode.OBLIGATION_INVALID, "nested quantifiers"),
        ({"redact": {"patterns": ["x" * 300]}}, ReasonCode.OBLIGATION_INVALID, "at most 256"),
        ({"redact": {"pointers": ["/content/0/text"]}}, ReasonCode.OBLIGATION_INVALID, "structuredContent"),
        ({"redact": ["[0-9]+"]}, ReasonCode.OBLIGATION_INVALID, "must be an object"),
        ({"redact": {"regexes": []}}, ReasonCode.OBLIGATION_INVALID, "unknown key"),
        ({"labels": "private"}, ReasonCode.OBLIGATION_INVALID, "obligations.labels"),
    ],
)
async def test_an_obligation_it_cannot_meet_withholds_the_result(
    obligations: dict[str, Any], code: ReasonCode, says: str
) -> None:
    e = engine(allow(**obligations))
    state = MemoryState()
    out, sink = await run(e, text_result(f"card {CARD}"), state=state)
    denial = out.denial
    assert out.result is None and denial is not None and denial.code is code
    assert any(says in r for r in denial.reasons), denial.reasons
    row = only(sink, EventKind.CALL_RESULT)
    assert row.result["withheld"] is True and row.reasons[0] == str(code)
    flow = await state.flow(flow_ref(call_ctx()).id)
    assert not flow.labels, "nothing is done for a result decision that is refused"


# ---------------------------------------------------------------------- labels
async def test_result_labels_join_the_flow_and_a_later_rule_sees_them() -> None:
    def on_result(i: PolicyInput) -> Decision:
        text = " ".join(b.get("text", "") for b in (i.result or {}).get("content", []))
        labels = ["private"] if "CONFIDENTIAL" in text else []
        return Decision(allow=True, obligations={"labels": labels}, revision="r1")

    e = engine(on_result)
    state = MemoryState()
    out, _sink = await run(e, text_result("CONFIDENTIAL: the plan"), state=state)
    assert out.result is not None and not out.denied
    flow = await state.flow(flow_ref(call_ctx()).id)
    assert set(flow.labels) == {"private"}
    origin = flow.labels["private"]
    entry = flow.history[-1]
    assert (entry.action, entry.labels, entry.decision) == ("tools/result", ("private",), "allow")
    assert origin.decision_id == entry.decision_id != out.decision.decision_id  # type: ignore[union-attr]
    # the next call's policy input carries the label
    e.inputs.clear()
    await run(e, text_result("next"), state=state)
    call_input = next(i for i in e.inputs if i.action == "tools/call")
    assert call_input.flow is not None and "private" in call_input.flow["labels"]
    assert call_input.flow["labeled_by"]["private"]["decision_id"] == entry.decision_id


async def test_a_flow_that_cannot_take_the_labels_withholds_the_result() -> None:
    class Failing(MemoryState):
        async def record_call(self, ref: FlowRef, call: FlowCall) -> FlowTicket | Any:
            if call.action == "tools/result":
                raise StateError("disk full", cause="disk full")
            return await super().record_call(ref, call)

    e = engine(allow(labels=["private"]))
    out, sink = await run(e, text_result("x"), state=Failing())
    denial = out.denial
    assert out.result is None and denial is not None and denial.code is ReasonCode.STATE_UNAVAILABLE
    assert only(sink, EventKind.CALL_RESULT).result["withheld"] is True


# ---------------------------------------------------------------------- which calls, and when it is off
async def test_an_upstream_error_and_a_denied_call_are_not_put_to_the_result_policy() -> None:
    e = engine(allow())
    error = Outcome(error=types.ErrorData(code=-32001, message="boom"))
    out, sink = await run(e, error)
    assert out.error is not None and not result_inputs(e)
    assert only(sink, EventKind.CALL_ERROR)

    deny_calls = FunctionEngine(lambda i: Decision(allow=i.action == "tools/result", reasons=("no",), revision="r"))
    out, _ = await run(deny_calls, text_result("x"))
    assert out.denied and not result_inputs(deny_calls)


async def test_an_is_error_result_is_asked_about_like_any_other() -> None:
    e = engine(allow())
    await run(e, text_result("failed", is_error=True))
    (asked,) = result_inputs(e)
    assert asked.result is not None and asked.result["is_error"] is True


@pytest.mark.parametrize("action", ["resources/read", "prompts/get"])
async def test_resources_and_prompts_pass_untouched(action: Any) -> None:
    e = engine(lambda _i: Decision(allow=False, reasons=("would withhold",), revision="r"))
    ctx = CallContext(**{**_fields(call_ctx()), "action": action})
    out, _ = await run(e, Outcome(result={"contents": [{"uri": "rec://x", "text": "t"}]}), ctx=ctx)
    assert out.result is not None and not out.denied and not result_inputs(e)


def _fields(ctx: CallContext) -> dict[str, Any]:
    return {name: getattr(ctx, name) for name in ctx.__dataclass_fields__}


async def test_off_when_not_forced_and_the_engine_shows_no_bundle() -> None:
    e = engine(lambda _i: Decision(allow=False, reasons=("would withhold",), revision="r"))
    out, sink = await run(e, text_result("x"), settings=OFF)
    assert out.result is not None and not result_inputs(e)
    row = only(sink, EventKind.CALL_RESULT)
    assert "result_decision" not in row.details


DECISION_REGO = """package mcp_guard

import rego.v1

decision := {"allow": true, "reasons": ["ok"], "obligations": {}}
"""
RESULT_REGO = """package mcp_guard

import rego.v1

decision := {"allow": false, "reasons": ["no results today"], "obligations": {}} if input.action == "tools/result"

else := {"allow": true, "reasons": ["ok"], "obligations": {}}
"""


def _bundle(root: Path, rego: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.rego").write_text(rego)
    return root


async def test_a_bundle_turns_it_on_by_mentioning_tools_result_and_a_reload_turns_it_off(tmp_path: Path) -> None:
    embedded = EmbeddedEngine(load_bundle(_bundle(tmp_path / "on", RESULT_REGO)))
    uses = ResultUse(embedded)
    assert uses()
    sink = RecordingSink()
    call, _ = pipeline(embedded, sink, settings=OFF, upstream=RecordingUpstream(text_result("x")))
    out = await call(call_ctx())
    assert out.denial is not None and out.denial.reasons == ("result_withheld", "no results today")

    embedded.reload(load_bundle(_bundle(tmp_path / "off", DECISION_REGO)))
    assert not uses()
    out = await call(call_ctx())
    assert out.result is not None and not out.denied


def test_bundle_detection_looks_for_the_action_name() -> None:
    assert bundle_uses_results({"a.rego": 'x if input.action == "tools/result"'})
    assert not bundle_uses_results({"a.rego": 'x if input.action == "tools/call"', "data.json": "{}"})
    assert ResultUse(object(), forced=True)()
    assert not ResultUse(object())()


async def test_a_withheld_result_keeps_the_calls_own_labels_and_joins_the_history_as_a_deny() -> None:
    def decide(i: PolicyInput) -> Decision:
        if i.action == "tools/result":
            return Decision(allow=False, reasons=("not this",), revision="r1")
        return Decision(allow=True, obligations={"labels": ["untrusted"]}, revision="r1")

    state = MemoryState()
    out, _sink = await run(FunctionEngine(decide), text_result("x"), state=state)
    assert out.denial is not None and out.decision is not None
    flow = await state.flow(flow_ref(call_ctx()).id)
    assert set(flow.labels) == {"untrusted"}, "the call reached the upstream: its labels are not taken back"
    assert [(c.decision, c.decision_id) for c in flow.history] == [
        ("allow", out.decision.decision_id),
        ("deny", out.decision.decision_id),
    ]


async def test_the_configured_bound_is_what_the_policy_sees() -> None:
    policy = {"result_policy": True, "result_max_bytes": 1024}
    small = parse_settings({"upstreams": {"rec": {"command": "never-started"}}, "policy": policy}, source="t")
    e = engine(allow())
    out, _ = await run(e, text_result("y" * 5000), settings=small)
    (asked,) = result_inputs(e)
    assert asked.result is not None and asked.result["truncated"] is True
    assert len(asked.result["content"][0]["text"]) == 1024
    assert out.result is not None and out.result["content"][0]["text"] == "y" * 5000, "the client gets it all"


async def test_a_call_cancelled_while_its_result_is_judged_is_recorded_as_cancelled() -> None:
    """ResultPolicy runs inside RecordDecision: a cancellation while the policy judges the result gets the
    ``call.cancelled`` row every allowed call is owed."""
    reached = anyio.Event()

    class Slow:
        async def evaluate(self, input: PolicyInput) -> Decision:
            if input.action == "tools/result":
                reached.set()
                await anyio.sleep_forever()
            return Decision(allow=True, revision="r1")

    sink = RecordingSink()
    call, _ = pipeline(Slow(), sink, settings=ON, upstream=RecordingUpstream(text_result("x")))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, call_ctx())
            await reached.wait()
            tg.cancel_scope.cancel()
    assert sink.kinds() == [EventKind.CALL_DECISION, EventKind.CALL_CANCELLED]
