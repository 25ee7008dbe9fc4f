"""The Observe stage: every request counted once, by the answer the client gets, with bounded labels.

The pipeline is the real stage order (pipeline_stages) in front of a RecordingUpstream, so what is
counted is what the real stages decide: the policy's allow and deny, fail-closed denies, obligations,
the audit store going down.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import mcp_types as types
import pytest
from pipeline_kit import call_ctx, registry

from mcp_guard.pipeline.build import pipeline_stages
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.observe import OTHER, CallMetrics, Observe
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.state import MemoryState
from mcp_guard.testing import FunctionEngine, RecordingSink, RecordingUpstream
from mcp_guard.types import Decision, PolicyInput, ReasonCode

pytestmark = pytest.mark.anyio

REV = "rev-m"


def _decide(i: PolicyInput) -> Decision:
    """echo: allowed; secret_tool: the policy denies; slow_engine: the engine timed out; odd: an
    obligation nobody enforces; limited: allowed with a limit of one call."""
    if i.tool == "secret_tool":
        return Decision(allow=False, reasons=("tickets are for support only",), revision=REV)
    if i.tool == "slow_engine":
        return Decision.deny(ReasonCode.TIMEOUT, "engine took 300 ms", revision=REV)
    if i.tool == "odd":
        return Decision(allow=True, obligations={"watermark": True}, revision=REV)
    if i.tool == "limited":
        return Decision(
            allow=True, obligations={"rate_limit": [{"key": "k", "limit": 1, "window_s": 60}]}, revision=REV
        )
    return Decision(allow=True, reasons=("ok",), revision=REV)


def _pipeline(
    metrics: CallMetrics, sink: RecordingSink | None = None, upstream: RecordingUpstream | None = None
) -> tuple[Any, RecordingSink, RecordingUpstream]:
    sink = sink or RecordingSink()
    upstream = upstream or RecordingUpstream()
    stages = pipeline_stages(
        engine=FunctionEngine(_decide),
        sink=sink,
        registry=registry(),
        secrets=NO_SECRETS,
        state=MemoryState(),
        metrics=metrics,
    )
    return build_chain(stages, upstream), sink, upstream


def test_observe_is_the_outermost_stage() -> None:
    stages = pipeline_stages(
        engine=FunctionEngine(_decide),
        sink=RecordingSink(),
        registry=registry(),
        secrets=NO_SECRETS,
        state=MemoryState(),
    )
    assert isinstance(stages[0], Observe)
    assert sum(isinstance(s, Observe) for s in stages) == 1


async def test_each_call_is_counted_once_by_decision_and_reason() -> None:
    m = CallMetrics()
    call, _sink, upstream = _pipeline(m)
    for tool in ("echo", "echo", "secret_tool", "slow_engine", "odd", "limited", "limited"):
        await call(call_ctx(tool=tool))

    assert m.calls == {
        ("rec", "echo", "allow", ""): 2,
        ("rec", "secret_tool", "deny", "policy"): 1,  # a policy deny: its free text is never a label
        ("rec", "slow_engine", "deny", "timeout"): 1,
        ("rec", "odd", "deny", "obligation_unknown"): 1,
        ("rec", "limited", "allow", ""): 1,
        ("rec", "limited", "deny", "rate_limited"): 1,
    }
    assert [c.target for c in upstream.seen] == ["echo", "echo", "limited"]  # the counts match what ran
    assert m.rate_limited == {("rec",): 1}
    assert sum(m.requests.values()) == 7
    assert m.requests[("rec", "tools/call", "deny", "policy")] == 1
    assert m.duration.count(("rec", "tools/call", "allow")) == 3
    assert m.duration.count(("rec", "tools/call", "deny")) == 4
    assert m.errors == {}


async def test_the_answer_the_client_gets_is_what_counts_audit_down_is_a_deny() -> None:
    m = CallMetrics()
    sink = RecordingSink()
    sink.fail = True  # the allow row cannot be written: the call is refused after the policy allowed it
    call, _, upstream = _pipeline(m, sink)
    outcome = await call(call_ctx(tool="echo"))

    assert outcome.decision is not None and outcome.decision.allow  # the governing decision was an allow
    assert outcome.override is not None  # … overridden
    assert m.calls == {("rec", "echo", "deny", "audit_unavailable"): 1}
    assert upstream.seen == []


async def test_the_audit_commit_wait_is_timed_for_every_row_a_call_waits_for() -> None:
    m = CallMetrics()
    call, sink, _ = _pipeline(m)
    await call(call_ctx(tool="echo"))  # an allow row, then the result row
    await call(call_ctx(tool="secret_tool"))  # one deny row
    assert len(sink.events) == 3
    assert m.audit_wait.count(()) == 3


async def test_an_upstream_error_is_an_allow_and_an_error() -> None:
    m = CallMetrics()
    failing = RecordingUpstream(Outcome(error=types.ErrorData(code=-32603, message="upstream broke")))
    call, _, _ = _pipeline(m, upstream=failing)
    await call(call_ctx(tool="echo"))
    assert m.calls == {("rec", "echo", "allow", ""): 1}
    assert m.errors == {("rec",): 1}


async def test_a_raising_pipeline_is_counted_as_error_and_the_exception_passes() -> None:
    m = CallMetrics()

    async def broken(_ctx: CallContext) -> Outcome:
        raise RuntimeError("a bug")

    call = build_chain([Observe(m)], broken)
    with pytest.raises(RuntimeError, match="a bug"):
        await call(call_ctx(tool="echo"))
    assert m.calls == {("rec", "echo", "error", ""): 1}
    assert m.duration.count(("rec", "tools/call", "error")) == 1


async def test_tool_labels_are_capped_per_upstream_and_resource_uris_are_never_labels() -> None:
    m = CallMetrics(max_tool_labels=2)
    call, _, _ = _pipeline(m)
    for tool in ("t1", "t2", "t3", "t4", "t1"):
        await call(call_ctx(tool=tool))
    await call(call_ctx(server="rec2", tool="t9"))  # another upstream has its own budget
    assert m.calls == {
        ("rec", "t1", "allow", ""): 2,
        ("rec", "t2", "allow", ""): 1,
        ("rec", OTHER, "allow", ""): 2,
        ("rec2", "t9", "allow", ""): 1,
    }
    assert sum(len(v) for v in m._tools.values()) == 3  # names past the cap are not remembered either

    read = replace(
        call_ctx(),
        action="resources/read",
        target="file:///home/alice/secret-plans.txt",
        exposed="rec+file:///home/alice/secret-plans.txt",
        request=types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri="file:///x")),
    )
    before = dict(m.calls)
    await call(read)
    assert m.calls == before  # calls_total is tools/call only
    assert m.requests[("rec", "resources/read", "allow", "")] == 1
    labels = {v for key in [*m.calls, *m.requests, *m.duration.series] for v in key}
    assert not any("secret-plans" in v for v in labels)


def test_repeated_calls_reuse_one_slot_and_resources_share_theirs() -> None:
    """Recording is a lookup of an existing slot: state grows with distinct label sets, never with calls
    (the cost itself is measured by bench/bench_metrics.py, not asserted here)."""
    m = CallMetrics()
    ctx = call_ctx(tool="echo")
    outcome = Outcome(result={}, decision=Decision(allow=True))
    for _ in range(5_000):
        m.observe(ctx, outcome, 0.001)
    for i in range(50):
        m.observe(replace(ctx, action="resources/read", target=f"file:///doc/{i}"), outcome, 0.001)
    assert len(m._slots) == 2
    assert m.calls == {("rec", "echo", "allow", ""): 5_000}
    assert m.requests[("rec", "resources/read", "allow", "")] == 50


STAGE_NAMES = (
    "InspectArguments",
    "RecordOutcome",
    "TrackFlow",
    "PinCheck",
    "Authorize",
    "EnforceObligations",
    "ExchangeToken",
    "RecordDecision",
    "Redact",
)


async def test_stage_metrics_time_each_stage_s_own_work_and_the_upstream_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a clock that only the upstream moves (5 s per request), every stage's own time is 0 and Forward's
    is 5 s: a stage is not charged for the stages inside it nor for the upstream."""
    from mcp_guard.pipeline import observe

    clock = [100.0]
    monkeypatch.setattr(observe, "perf_counter", lambda: clock[0])
    upstream = RecordingUpstream()

    async def slow_upstream(ctx: CallContext) -> Outcome:
        clock[0] += 5.0
        return await upstream(ctx)

    m = CallMetrics()
    stages = pipeline_stages(
        engine=FunctionEngine(_decide),
        sink=RecordingSink(),
        registry=registry(),
        secrets=NO_SECRETS,
        state=MemoryState(),
        metrics=m,
        stage_metrics=True,
    )
    assert isinstance(stages[0], Observe) and all(isinstance(s, observe.StageTimer) for s in stages[1:])
    call = build_chain(stages, m.time_forward(slow_upstream))
    for tool in ("echo", "echo", "secret_tool"):
        await call(call_ctx(tool=tool))

    assert m.stages.count(("Forward",)) == 2 and m.stages.series_for(("Forward",))[-1] == 10.0
    for name in STAGE_NAMES:
        series = m.stages.series_for((name,))
        assert series[-1] == 0.0, name  # own time only
    # The policy denied secret_tool: the stages inside Authorize never saw it.
    assert m.stages.count(("Authorize",)) == 3 and m.stages.count(("RecordDecision",)) == 2
    assert m.duration.count(("rec", "tools/call", "allow")) == 2  # Observe still counts every request


def test_stage_metrics_are_off_by_default() -> None:
    from mcp_guard.pipeline import observe

    sink, state = RecordingSink(), MemoryState()
    stages = pipeline_stages(
        engine=FunctionEngine(_decide), sink=sink, registry=registry(), secrets=NO_SECRETS, state=state
    )
    assert not any(isinstance(s, observe.StageTimer) for s in stages)
