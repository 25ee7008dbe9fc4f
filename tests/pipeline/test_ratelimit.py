"""Rate limits in the pipeline: the ``rate_limit`` obligation, ``context.usage``, and what counts.

Stores run on an injected clock (tests/state/test_state_stores.py checks the window arithmetic itself).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pipeline_kit import call_ctx, pipeline

from mcp_guard.errors import StateError
from mcp_guard.pipeline.authorize import Authorize
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.obligations import EnforceObligations, Refusal, Undo
from mcp_guard.pipeline.ratelimit import (
    DeclaredUsage,
    RateLimitObligation,
    UsageRead,
    bundle_data_of,
    declared_rates,
    parse_limits,
)
from mcp_guard.policy.bundle import Bundle, load_bundle
from mcp_guard.policy.cache import CachedEngine
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.reads import InputReads, reads_path
from mcp_guard.settings import DecisionCacheSettings
from mcp_guard.state import (
    Admission,
    Applied,
    Bucket,
    Flow,
    FlowCall,
    FlowFull,
    FlowRef,
    FlowTicket,
    Limit,
    MemoryState,
    SQLiteState,
    StateOp,
    Ticket,
)
from mcp_guard.state.base import apply_in_turn
from mcp_guard.testing import FunctionEngine, RecordingSink, RecordingUpstream, allow_all
from mcp_guard.types import Decision, EventKind, PolicyInput, Principal, ReasonCode, SessionInfo

pytestmark = pytest.mark.anyio

BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "rego"
KEY = "tool_calls|alice|rec|echo"


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


class DownStore:
    """A state store whose counters cannot answer (and counts how often they were asked); its flows work
    (they are tests/pipeline/test_flow.py's subject)."""

    def __init__(self) -> None:
        self.asked = 0
        self._flows = MemoryState()

    async def flow(self, flow_id: str) -> Flow:
        return await self._flows.flow(flow_id)

    async def record_call(self, ref: FlowRef, call: FlowCall) -> FlowTicket | FlowFull:
        return await self._flows.record_call(ref, call)

    async def unrecord_call(self, ticket: FlowTicket) -> None:
        await self._flows.unrecord_call(ticket)

    async def admit(self, limits: Sequence[Limit]) -> Admission:
        self.asked += 1
        raise StateError("the state store /var/lib/x cannot count this call: disk I/O error", cause="disk I/O error")

    async def release(self, ticket: Ticket) -> None:
        self.asked += 1
        raise StateError("down", cause="down")

    async def apply(self, ops: Sequence[StateOp]) -> Applied:
        return await apply_in_turn(self, ops)

    async def usage(self, buckets: Sequence[Bucket]) -> dict[Bucket, int]:
        self.asked += 1
        raise StateError("the state store /var/lib/x cannot read usage: disk I/O error", cause="disk I/O error")

    async def aclose(self) -> None:
        return None


def limited(*limits: dict[str, Any], allow: bool = True) -> FunctionEngine:
    return FunctionEngine(
        lambda _i: Decision(allow=allow, reasons=("ok",), obligations={"rate_limit": list(limits)}, revision="rev-r")
    )


def per_call(limit: int = 2, window_s: float = 60) -> dict[str, Any]:
    return {"key": KEY, "limit": limit, "window_s": window_s}


def _text(outcome: Outcome) -> str:
    d = outcome.denial
    return "; ".join(d.reasons) if d is not None else ""


# --------------------------------------------------------------------------- the obligation's value
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"key": "k", "limit": 1, "window_s": 1}, "obligations.rate_limit must be a list"),
        (["k"], "obligations.rate_limit[0] must be an object"),
        ([{"key": "", "limit": 1, "window_s": 1}], "obligations.rate_limit[0].key must be a non-empty string"),
        ([{"key": None, "limit": 1, "window_s": 1}], "[0].key must be a non-empty string"),
        ([{"key": "k" * 513, "limit": 1, "window_s": 1}], "at most 512 characters"),
        ([{"key": "k", "limit": 0, "window_s": 1}], "[0].limit must be an integer from 1"),
        ([{"key": "k", "limit": 1.5, "window_s": 1}], "[0].limit must be an integer from 1"),
        ([{"key": "k", "limit": True, "window_s": 1}], "[0].limit must be an integer from 1"),
        ([{"key": "k", "limit": "5", "window_s": 1}], "got string"),
        ([{"key": "k", "limit": 1, "window_s": 0}], "[0].window_s must be seconds above 0"),
        ([{"key": "k", "limit": 1, "window_s": -3}], "[0].window_s must be seconds above 0"),
        ([{"key": "k", "limit": 1}], "[0].window_s must be seconds above 0"),
        ([{"key": "k", "limit": 1, "window_s": 1, "per": "session"}], "unknown field(s) 'per'"),
        ([{"key": "k", "limit": 1, "window_s": 1}] * 65, "65 entries, at most 64"),
    ],
)
def test_a_malformed_value_says_what_is_wrong(value: object, problem: str) -> None:
    result = parse_limits(value)
    assert isinstance(result, str) and problem in result


def test_a_well_formed_value_is_parsed() -> None:
    assert parse_limits([{"key": "a", "limit": 5, "window_s": 60}, {"key": "b", "limit": 1, "window_s": 0.5}]) == [
        Limit("a", 5, 60.0),
        Limit("b", 1, 0.5),
    ]
    assert parse_limits([]) == []


async def test_malformed_is_obligation_invalid_recorded_and_not_forwarded() -> None:
    sink = RecordingSink()
    call, upstream = pipeline(limited({"key": None, "limit": 5, "window_s": 60}), sink, state=MemoryState())
    outcome = await call(call_ctx())
    assert upstream.seen == []
    d = outcome.denial
    assert d is not None and d.code == ReasonCode.OBLIGATION_INVALID and "[0].key" in d.reasons[1]
    (row,) = sink.events
    assert row.decision == "deny" and row.reasons == d.reasons and row.policy_revision == "rev-r"


# --------------------------------------------------------------------------- counting
async def test_the_limit_holds_and_the_deny_says_when_to_retry() -> None:
    clock = Clock()
    state = MemoryState(clock=clock)
    sink = RecordingSink()
    call, upstream = pipeline(limited(per_call(limit=2, window_s=60)), sink, state=state)
    assert not (await call(call_ctx())).denied
    clock.now += 15
    assert not (await call(call_ctx())).denied
    clock.now += 10.5
    outcome = await call(call_ctx())

    assert len(upstream.seen) == 2
    d = outcome.denial
    assert d is not None and d.code == ReasonCode.RATE_LIMITED and d.revision == "rev-r"
    # the first hit (at 0) leaves the window at 60; it is now 25.5 → 34.5 s, rounded up
    assert d.reasons[1] == f"rate limit reached: {KEY!r} allows 2 per 60 s; retry after 35 s (retry_after_s=35)"
    assert "session" not in d.reasons[1]
    deny = sink.of_kind(EventKind.CALL_DECISION)[-1]
    assert deny.decision == "deny" and deny.reasons == d.reasons  # recorded as every deny is
    assert deny.decision_id == d.decision_id

    clock.now += 34.5  # exactly one window after the first call
    assert not (await call(call_ctx())).denied


async def test_a_new_session_does_not_reset_the_limit() -> None:
    call, upstream = pipeline(limited(per_call(limit=1)), RecordingSink(), state=MemoryState())
    assert not (await call(call_ctx())).denied
    fresh = replace(call_ctx(), session=SessionInfo("a-new-session-every-request", "http"))
    outcome = await call(fresh)
    assert outcome.denial is not None and outcome.denial.code == ReasonCode.RATE_LIMITED
    assert len(upstream.seen) == 1


async def test_only_calls_the_policy_allows_count() -> None:
    state = MemoryState()

    def decide(i: PolicyInput) -> Decision:
        if i.arguments.get("text") == "no":
            return Decision(allow=False, reasons=("policy says no",), revision="rev-r")
        return Decision(allow=True, obligations={"rate_limit": [per_call(limit=2)]}, revision="rev-r")

    call, upstream = pipeline(FunctionEngine(decide), RecordingSink(), state=state)
    for _ in range(5):
        assert (await call(call_ctx(arguments={"text": "no"}))).denied
    assert await state.usage([(KEY, 60.0)]) == {(KEY, 60.0): 0}
    assert not (await call(call_ctx())).denied
    assert not (await call(call_ctx())).denied
    assert (await call(call_ctx())).denied  # rate-limited: not counted either
    assert await state.usage([(KEY, 60.0)]) == {(KEY, 60.0): 2}
    assert len(upstream.seen) == 2


async def test_a_call_the_audit_cannot_record_is_taken_back() -> None:
    state = MemoryState()
    sink = RecordingSink()
    sink.fail_when = lambda e: e.kind == EventKind.CALL_DECISION and e.decision == "allow"
    call, upstream = pipeline(limited(per_call(limit=1)), sink, state=state)
    outcome = await call(call_ctx())
    assert outcome.denial is not None and outcome.denial.code == ReasonCode.AUDIT_UNAVAILABLE
    assert upstream.seen == []
    assert await state.usage([(KEY, 60.0)]) == {(KEY, 60.0): 0}  # not forwarded, so not counted
    sink.fail_when = None
    assert not (await call(call_ctx())).denied  # the one slot is still there


async def test_a_forwarded_call_counts_whatever_the_upstream_answered() -> None:
    import mcp_types as types

    state = MemoryState()
    failing = RecordingUpstream(Outcome(error=types.ErrorData(code=-32010, message="upstream down")))
    call, _ = pipeline(limited(per_call(limit=1)), RecordingSink(), state=state, upstream=failing)
    assert (await call(call_ctx())).error is not None
    assert await state.usage([(KEY, 60.0)]) == {(KEY, 60.0): 1}


class _Refuses:
    name = "later"
    always = True

    async def enforce(self, ctx: CallContext, value: object) -> Refusal | Undo | None:
        return Refusal(ReasonCode.SECRET_NOT_GRANTED, "a later obligation refuses")


async def test_a_later_handler_refusing_takes_the_count_back() -> None:
    state = MemoryState()
    ctx = replace(call_ctx(), decision=Decision(allow=True, obligations={"rate_limit": [per_call(limit=1)]}))
    upstream = RecordingUpstream()
    outcome = await EnforceObligations([RateLimitObligation(state), _Refuses()])(ctx, upstream)
    assert outcome.denial is not None and outcome.denial.reasons[1] == "a later obligation refuses"
    assert await state.usage([(KEY, 60.0)]) == {(KEY, 60.0): 0}


async def test_several_limits_in_one_obligation_are_all_or_nothing() -> None:
    state = MemoryState()
    principal_wide = {"key": "all|alice", "limit": 10, "window_s": 3600}
    call, _ = pipeline(limited(per_call(limit=1), principal_wide), RecordingSink(), state=state)
    assert not (await call(call_ctx())).denied
    assert (await call(call_ctx())).denied
    assert await state.usage([("all|alice", 3600.0)]) == {("all|alice", 3600.0): 1}


async def test_an_empty_list_counts_nothing_and_asks_no_store() -> None:
    down = DownStore()
    call, upstream = pipeline(limited(), RecordingSink(), state=down)
    assert not (await call(call_ctx())).denied and len(upstream.seen) == 1 and down.asked == 0


# --------------------------------------------------------------------------- fail closed
async def test_a_store_that_cannot_count_denies_state_unavailable_and_is_recorded() -> None:
    sink = RecordingSink()
    call, upstream = pipeline(limited(per_call()), sink, state=DownStore())
    outcome = await call(call_ctx())
    assert upstream.seen == []
    d = outcome.denial
    assert d is not None and d.code == ReasonCode.STATE_UNAVAILABLE
    assert "rate-limit counters cannot be used (disk I/O error)" in d.reasons[1]
    assert "/var/lib" not in d.reasons[1]  # the client is told the cause, not the server's paths
    (row,) = sink.events
    assert row.kind == EventKind.CALL_DECISION and row.decision == "deny"
    assert row.reasons is not None and row.reasons[0] == ReasonCode.STATE_UNAVAILABLE


async def test_an_unwritable_sqlite_file_denies_state_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteState(path)
    await store.start()
    call, upstream = pipeline(limited(per_call()), RecordingSink(), state=store)
    assert not (await call(call_ctx())).denied
    for f in tmp_path.glob("state.db*"):  # noqa: ASYNC240 - a test's own tmp dir, instant
        f.unlink()
    path.mkdir()
    outcome = await call(call_ctx())
    assert outcome.denial is not None and outcome.denial.code == ReasonCode.STATE_UNAVAILABLE
    assert "unable to open database file" in outcome.denial.reasons[1]
    assert len(upstream.seen) == 1
    await store.aclose()


# --------------------------------------------------------------------------- context.usage
RATE_DATA = {
    "mcp_guard_config": {
        "limits": {
            "rate": [
                {"name": "tool_calls", "by": ["principal", "server", "tool"], "limit": 2, "window_s": 60},
                {"name": "all", "by": ["principal"], "limit": 100, "window_s": 3600, "actions": ["tools/call"]},
                {"name": "reads", "by": ["principal"], "limit": 9, "window_s": 60, "actions": ["resources/read"]},
            ]
        }
    }
}


def test_declarations_are_read_from_bundle_data_and_bad_ones_named() -> None:
    data = {"mcp_guard_config": {"limits": {"rate": [*RATE_DATA["mcp_guard_config"]["limits"]["rate"], {"by": []}]}}}
    found, problems = declared_rates(data)
    assert [d.name for d in found] == ["tool_calls", "all", "reads"]
    assert problems == ["limits.rate[3]: name must be a non-empty string"]
    assert declared_rates({}) == ((), [])
    assert declared_rates({"mcp_guard_config": {"limits": {"rate": "x"}}})[1] == [
        "limits.rate is string, expected a list"
    ]
    _, bad_by = declared_rates(
        {"mcp_guard_config": {"limits": {"rate": [{"name": "n", "by": ["session"], "window_s": 1}]}}}
    )
    assert bad_by == ["limits.rate[0]: by must be a list of principal, server, tool"]


async def test_the_policy_sees_usage_of_the_declared_keys() -> None:
    clock = Clock()
    state = MemoryState(clock=clock)
    engine = FunctionEngine(
        lambda _i: Decision(allow=True, obligations={"rate_limit": [per_call(limit=5)]}, revision="rev-r")
    )
    stage = Authorize(engine, DeclaredUsage(state, lambda: RATE_DATA))
    for _ in range(3):
        await stage(call_ctx(), RecordingUpstream())
        await state.admit([Limit(KEY, 5, 60.0)])
    seen = [dict(i.usage) for i in engine.inputs]
    assert seen == [
        {KEY: 0, "all|alice": 0},
        {KEY: 1, "all|alice": 0},
        {KEY: 2, "all|alice": 0},
    ]  # resources/read declarations are not read for a tools/call
    assert engine.inputs[0].to_dict()["context"]["usage"] == {KEY: 0, "all|alice": 0}
    clock.now += 60
    await stage(call_ctx(), RecordingUpstream())
    assert dict(engine.inputs[-1].usage) == {KEY: 0, "all|alice": 0}  # the window passed


async def test_no_declarations_no_store_read() -> None:
    down = DownStore()
    engine = allow_all()
    stage = Authorize(engine, DeclaredUsage(down, lambda: {"mcp_guard_config": {"limits": {}}}))
    outcome = await stage(call_ctx(), RecordingUpstream())
    assert not outcome.denied and down.asked == 0 and dict(engine.inputs[0].usage) == {}


async def test_usage_that_cannot_be_read_denies_before_the_policy_is_asked() -> None:
    engine = allow_all()
    stage = Authorize(engine, DeclaredUsage(DownStore(), lambda: RATE_DATA))
    outcome = await stage(call_ctx(), RecordingUpstream())
    assert engine.inputs == []
    d = outcome.denial
    assert d is not None and d.code == ReasonCode.STATE_UNAVAILABLE and "(disk I/O error)" in d.reasons[1]


async def test_with_the_default_bundle_a_store_that_is_down_is_a_recorded_deny() -> None:
    """The shipped bundle never reads ``context.usage``, so no usage is read: the admission meets the broken store."""
    sink = RecordingSink()
    call, upstream = pipeline(EmbeddedEngine(load_bundle(BUNDLE)), sink, state=DownStore())
    ctx = replace(call_ctx(server="tickets", tool="get_ticket", arguments={"id": 1}), principal=Principal("alice"))
    outcome = await call(ctx)
    assert upstream.seen == []
    assert outcome.denial is not None and outcome.denial.code == ReasonCode.STATE_UNAVAILABLE
    (row,) = sink.events
    assert row.decision == "deny" and row.reasons is not None and row.reasons[0] == ReasonCode.STATE_UNAVAILABLE
    assert "rate-limit counters cannot be used (disk I/O error)" in row.reasons[1]


# A rule tiered on usage (never firing): with it the bundle's decision can read context.usage.
TIERED = """package mcp_guard
import rego.v1
deny contains "over a billion" if usage("tool_calls|alice|tickets|get_ticket") > 1000000000
"""


@pytest.mark.parametrize("reads_usage", [False, True])
async def test_the_default_bundle_end_to_end_limits_and_shows_usage(tmp_path: Path, reads_usage: bool) -> None:
    """The shipped bundle with its per-tool limit at 2: its obligation and the usage it sees name one key. As
    shipped it never reads ``context.usage``, so none is read (the policy sees none); with a rule that reads it,
    the usage is the count the obligation enforces."""
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root)
    if reads_usage:
        (root / "mcp_guard" / "tiered.rego").write_text(TIERED)
    bundle = load_bundle(root)
    data: dict[str, Any] = {**bundle.data}
    data["mcp_guard_config"] = {
        **data["mcp_guard_config"],
        "limits": {"rate": [{"name": "tool_calls", "by": ["principal", "server", "tool"], "limit": 2, "window_s": 60}]},
    }
    engine = EmbeddedEngine(replace(bundle, data=data))
    seen: list[Mapping[str, int]] = []
    real = engine.evaluate

    async def evaluate(i: PolicyInput) -> Decision:
        seen.append(dict(i.usage))
        return await real(i)

    engine.evaluate = evaluate  # type: ignore[method-assign]  # watch the inputs of the real engine
    state = SQLiteState(tmp_path / "state.db")
    await state.start()
    sink = RecordingSink()
    call, upstream = pipeline(engine, sink, state=state)
    ctx = replace(call_ctx(server="tickets", tool="get_ticket", arguments={"id": 1}), principal=Principal("alice"))
    results = [await call(ctx) for _ in range(3)]
    await state.aclose()

    assert [r.denied for r in results] == [False, False, True]
    key = "tool_calls|alice|tickets|get_ticket"
    assert seen == ([{key: 0}, {key: 1}, {key: 2}] if reads_usage else [{}, {}, {}])
    d = results[2].denial
    assert d is not None and d.code == ReasonCode.RATE_LIMITED and re.search(r"retry after \d+ s", d.reasons[1])
    allow_rows = [e for e in sink.of_kind(EventKind.CALL_DECISION) if e.decision == "allow"]
    assert len(allow_rows) == 2 and len(upstream.seen) == 2


def test_only_an_engine_that_holds_its_bundle_gives_declarations() -> None:
    engine = EmbeddedEngine(load_bundle(BUNDLE))
    data = bundle_data_of(engine)
    assert data is not None and "limits" in data()["mcp_guard_config"]
    assert bundle_data_of(allow_all()) is None


def _bundle_with(tmp_path: Path, extra: str | None) -> Bundle:
    root = tmp_path / ("tiered" if extra else "shipped")
    shutil.copytree(BUNDLE, root)
    if extra:
        (root / "mcp_guard" / "tiered.rego").write_text(extra)
    return load_bundle(root)


def test_usage_is_read_only_when_a_decision_can_read_it(tmp_path: Path) -> None:
    shipped, tiered = _bundle_with(tmp_path, None), _bundle_with(tmp_path, TIERED)
    assert not UsageRead(EmbeddedEngine(shipped))()
    assert not UsageRead(CachedEngine(EmbeddedEngine(shipped), DecisionCacheSettings()))()  # the cache's read set
    assert UsageRead(EmbeddedEngine(tiered))()
    assert UsageRead(EmbeddedEngine(shipped), EmbeddedEngine(tiered))()  # the shadow candidate is asked the same
    assert UsageRead(allow_all())()  # a bundle mcp-guard does not hold: assumed to read it


def test_a_reload_is_analysed_again(tmp_path: Path) -> None:
    engine = EmbeddedEngine(_bundle_with(tmp_path, None))
    reads = UsageRead(engine)
    assert not reads()
    engine.reload(_bundle_with(tmp_path, TIERED))
    assert reads()


def test_what_counts_as_reading_usage() -> None:
    usage = ("context", "usage")
    assert reads_path(InputReads((("context", "usage"),)), usage)
    assert reads_path(InputReads((("context",),)), usage)  # the whole context holds it
    assert reads_path(InputReads((("context", "usage", "k"),)), usage)
    assert not reads_path(InputReads((("context", "flow"), ("action",))), usage)
    assert reads_path(InputReads((), "reads the whole input"), usage)
