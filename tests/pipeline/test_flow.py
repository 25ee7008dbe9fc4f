"""Session information flow in the pipeline: what a flow is, ``context.flow``, the ``labels`` obligation,
what sticks (only forwarded calls' labels), failing closed, and what a bundle without flows pays.

Stores run on an injected clock (tests/state/test_flows.py checks the store contract itself).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from pipeline_kit import call_ctx, pipeline

from mcp_guard.errors import StateError
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.flow import (
    FLOW_META_KEY,
    FlowUse,
    HistoryRead,
    LabelsObligation,
    TrackFlow,
    bundle_uses_flows,
    correlation_id,
    flow_ref,
    parse_labels,
)
from mcp_guard.pipeline.obligations import EnforceObligations
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.cache import CachedEngine
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.settings import DecisionCacheSettings
from mcp_guard.state import (
    Flow,
    FlowBounds,
    FlowCall,
    FlowFull,
    FlowRef,
    FlowTicket,
    MemoryState,
    SQLiteState,
    StateStore,
)
from mcp_guard.testing import FunctionEngine, RecordingSink, RecordingUpstream
from mcp_guard.types import Decision, EventKind, PolicyInput, Principal, ReasonCode, SessionInfo, ToolInfo

pytestmark = pytest.mark.anyio

BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "rego"


class Clock:
    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now


def labelling(
    labels: Mapping[str, list[str]], *, deny: frozenset[str] = frozenset(), **more: list[dict[str, Any]]
) -> FunctionEngine:
    """Allow every tool, labelling it as ``labels`` says (with the obligations ``more``); deny those in ``deny``."""

    def decide(i: PolicyInput) -> Decision:
        tool = i.tool or ""
        if tool in deny:
            return Decision(allow=False, reasons=(f"no {tool}",), obligations={"labels": ["ignored"]}, revision="r")
        obligations: dict[str, Any] = dict(more)
        if tool in labels:
            obligations["labels"] = labels[tool]
        return Decision(allow=True, reasons=("ok",), obligations=obligations, revision="r")

    return FunctionEngine(decide)


def ctx_in(session: str = "s1", tool: str = "echo", **session_fields: Any) -> CallContext:
    return replace(call_ctx(tool=tool), session=SessionInfo(session, "http", **session_fields))


def stateless(principal: str = "alice", client: str | None = "agent-app", corr: str | None = None) -> CallContext:
    base = ctx_in("one-request-session-" + (corr or "none"), client_name=client, stateless=True)
    return replace(base, principal=Principal(principal), correlation_id=corr)


def flow_doc(engine: FunctionEngine, i: int = -1) -> dict[str, Any]:
    doc = engine.inputs[i].to_dict()["context"]
    assert "flow" in doc, "the policy input has no context.flow"
    flow: dict[str, Any] = doc["flow"]
    return flow


# --------------------------------------------------------------------------- what a flow is
def test_a_session_is_a_flow() -> None:
    assert flow_ref(ctx_in("s1")) == flow_ref(ctx_in("s1", tool="other"))
    assert flow_ref(ctx_in("s1")).id != flow_ref(ctx_in("s2")).id
    # a 2025-11-25 session cannot be split: a correlation id is ignored
    assert flow_ref(replace(ctx_in("s1"), correlation_id="c1")) == flow_ref(ctx_in("s1"))
    assert flow_ref(ctx_in("s1")).principal == "alice"


def test_a_stateless_flow_is_principal_client_and_correlation_id() -> None:
    same = flow_ref(stateless(corr="c1"))
    assert flow_ref(stateless(corr="c1")) == same  # every request its own session, still one flow
    assert flow_ref(stateless(corr="c2")) != same
    assert flow_ref(stateless(client="other-app", corr="c1")) != same
    assert flow_ref(stateless(principal="bob", corr="c1")) != same
    assert flow_ref(stateless()) != same  # no correlation id: the principal + client flow
    assert flow_ref(stateless()) == flow_ref(stateless())
    assert flow_ref(stateless(client=None)) == flow_ref(stateless(client=None))
    # the id is opaque: no session id, principal or correlation id in it
    assert same.id.startswith("f-") and len(same.id) == 34 and "c1" not in same.id and "alice" not in same.id
    # parts cannot run into each other
    assert flow_ref(stateless(principal="a", client="b|c")) != flow_ref(stateless(principal="a|b", client="c"))


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({FLOW_META_KEY: "ticket-4711"}, "ticket-4711"),
        ({FLOW_META_KEY: "x" * 128}, "x" * 128),
        ({}, None),
        (None, None),
        ({FLOW_META_KEY: ""}, None),
        ({FLOW_META_KEY: "x" * 129}, None),
        ({FLOW_META_KEY: 42}, None),
        ({FLOW_META_KEY: "two\nlines"}, None),
        ({FLOW_META_KEY: ["a"]}, None),
    ],
)
def test_the_correlation_id_is_a_short_printable_string_or_ignored(meta: object, expected: str | None) -> None:
    assert correlation_id(meta) == expected


# --------------------------------------------------------------------------- the obligation's value
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("private", "obligations.labels must be a list of label names, got string"),
        ({"private": True}, "got object"),
        ([1], "obligations.labels[0] must be a name"),
        (["ok", None], "obligations.labels[1] must be a name"),
        (["has space"], "got 'has space'"),
        ([""], "obligations.labels[0]"),
        (["-leading"], "obligations.labels[0]"),
        (["x" * 65], "obligations.labels[0]"),
        ([f"l{i}" for i in range(17)], "17 entries, at most 16"),
    ],
)
def test_a_malformed_labels_value_says_what_is_wrong(value: object, problem: str) -> None:
    result = parse_labels(value)
    assert isinstance(result, str) and problem in result


def test_labels_are_deduplicated_in_order() -> None:
    assert parse_labels(["untrusted", "private", "untrusted", "pii:eu", "a/b.c-d_e"]) == (
        "untrusted",
        "private",
        "pii:eu",
        "a/b.c-d_e",
    )
    assert parse_labels([]) == ()


@pytest.mark.parametrize("value", ["private", [None], [f"l{i}" for i in range(17)]])
async def test_malformed_labels_are_obligation_invalid_recorded_and_not_forwarded(value: object) -> None:
    state, sink = MemoryState(), RecordingSink()
    engine = FunctionEngine(lambda _i: Decision(allow=True, obligations={"labels": value}, revision="rev-l"))
    call, upstream = pipeline(engine, sink, state=state)
    outcome = await call(ctx_in())
    d = outcome.denial
    assert d is not None and d.code == ReasonCode.OBLIGATION_INVALID and "obligations.labels" in d.reasons[1]
    assert upstream.seen == []
    (row,) = sink.events
    assert row.kind == EventKind.CALL_DECISION and row.decision == "deny" and row.reasons == d.reasons
    flow = await state.flow(flow_ref(ctx_in()).id)
    assert dict(flow.labels) == {} and [(c.decision, c.decision_id) for c in flow.history] == [("deny", d.decision_id)]


# --------------------------------------------------------------------------- context.flow
async def test_the_policy_sees_the_labels_and_history_of_its_flow() -> None:
    engine = labelling({"get_ticket": ["private"], "fetch": ["untrusted"]})
    call, _ = pipeline(engine, RecordingSink(), state=MemoryState())
    first = await call(ctx_in(tool="get_ticket"))
    assert flow_doc(engine) == {"id": flow_ref(ctx_in()).id, "labels": [], "labeled_by": {}, "history": []}
    second = await call(ctx_in(tool="fetch"))
    await call(ctx_in(tool="post"))
    assert first.decision is not None and second.decision is not None
    flow = flow_doc(engine)
    assert flow["labels"] == ["private", "untrusted"]
    assert flow["labeled_by"]["private"]["decision_id"] == first.decision.decision_id
    assert flow["labeled_by"]["untrusted"] == {
        "decision_id": second.decision.decision_id,
        "server": "rec",
        "tool": "fetch",
        "time": flow["history"][1]["time"],
    }
    assert [(h["tool"], h["decision"], h["labels"], h["action"]) for h in flow["history"]] == [
        ("get_ticket", "allow", ["private"], "tools/call"),
        ("fetch", "allow", ["untrusted"], "tools/call"),
    ]
    json.dumps(engine.inputs[-1].to_dict())  # the input document stays plain JSON


async def test_denied_calls_enter_the_history_as_denies_and_add_no_label() -> None:
    engine = labelling({"get_ticket": ["private"]}, deny=frozenset({"post"}))
    state = MemoryState()
    call, upstream = pipeline(engine, RecordingSink(), state=state)
    denied = await call(ctx_in(tool="post"))  # the deny carries labels: ignored
    allowed = await call(ctx_in(tool="echo"))
    assert denied.denial is not None and allowed.decision is not None and len(upstream.seen) == 1
    flow = await state.flow(flow_ref(ctx_in()).id)
    assert dict(flow.labels) == {}
    assert [(c.tool, c.decision, c.labels, c.decision_id) for c in flow.history] == [
        ("post", "deny", (), denied.denial.decision_id),
        ("echo", "allow", (), allowed.decision.decision_id),
    ]


async def test_a_new_session_is_a_fresh_flow() -> None:
    engine = labelling({"get_ticket": ["private"]})
    call, _ = pipeline(engine, RecordingSink(), state=MemoryState())
    await call(ctx_in("s1", tool="get_ticket"))
    await call(ctx_in("s1"))
    assert flow_doc(engine)["labels"] == ["private"]
    await call(ctx_in("s2"))
    assert flow_doc(engine)["labels"] == []


async def test_stateless_requests_share_the_flow_of_their_correlation_id() -> None:
    engine = labelling({"get_ticket": ["private"]})
    call, _ = pipeline(engine, RecordingSink(), state=MemoryState())
    await call(replace(stateless(corr="c1"), target="get_ticket"))
    await call(stateless(corr="c1"))
    assert flow_doc(engine)["labels"] == ["private"]
    await call(stateless(corr="c2"))
    assert flow_doc(engine)["labels"] == []
    await call(stateless(client="another-app", corr="c1"))
    assert flow_doc(engine)["labels"] == []


async def test_an_idle_flow_expires_after_its_ttl() -> None:
    clock = Clock()
    engine = labelling({"get_ticket": ["private"]})
    call, _ = pipeline(engine, RecordingSink(), state=MemoryState(clock=clock, flows=FlowBounds(idle_s=600)))
    await call(ctx_in(tool="get_ticket"))
    clock.now += 599
    await call(ctx_in())  # still there; this call restarts the idle time
    assert flow_doc(engine)["labels"] == ["private"]
    clock.now += 599
    await call(ctx_in())
    assert flow_doc(engine)["labels"] == ["private"]
    clock.now += 600
    await call(ctx_in())
    assert flow_doc(engine) == {"id": flow_ref(ctx_in()).id, "labels": [], "labeled_by": {}, "history": []}


# --------------------------------------------------------------------------- only forwarded calls label
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_call_the_rate_limit_refuses_adds_no_label(backend: str, tmp_path: Path) -> None:
    """Labels and the admission are one batch: the refused admission rolls the record back (SQLite: one
    transaction; the in-memory store takes it back op by op)."""
    state: StateStore = MemoryState() if backend == "memory" else SQLiteState(tmp_path / "s.db")
    if isinstance(state, SQLiteState):
        await state.start()
    limit: list[dict[str, Any]] = [{"key": "k", "limit": 1, "window_s": 60}]
    engine = labelling({"get_ticket": ["private"], "fetch": ["untrusted"]}, rate_limit=limit)
    call, upstream = pipeline(engine, RecordingSink(), state=state)
    assert not (await call(ctx_in(tool="get_ticket"))).denied
    refused = await call(ctx_in(tool="fetch"))
    d = refused.denial
    assert d is not None and d.code == ReasonCode.RATE_LIMITED and len(upstream.seen) == 1
    flow = await state.flow(flow_ref(ctx_in()).id)
    assert set(flow.labels) == {"private"}  # "untrusted" was recorded, then rolled back with the refused batch
    assert [(c.tool, c.decision, c.decision_id) for c in flow.history][-1] == ("fetch", "deny", d.decision_id)
    assert len(flow.history) == 2
    await state.aclose()


async def test_with_the_shipped_bundle_an_allowed_call_is_one_write_transaction_and_reads_no_usage(
    tmp_path: Path,
) -> None:
    """The decision cache in front (as ``mcp-guard run`` has it): the flow is read (from the store's cache after the
    first call), the shipped bundle's decision cannot read ``context.usage`` so no counter is read, and the
    labels record and the rate-limit admission commit in one ``BEGIN IMMEDIATE``."""
    state = SQLiteState(tmp_path / "s.db")
    await state.start()
    engine = CachedEngine(EmbeddedEngine(load_bundle(BUNDLE)), DecisionCacheSettings())
    call, upstream = pipeline(engine, RecordingSink(), state=state)
    ctx = replace(call_ctx(server="tickets", tool="get_ticket", arguments={"id": 1}), principal=Principal("alice"))
    assert not (await call(ctx)).denied
    assert state._db is not None
    seen: list[str] = []
    state._db.set_trace_callback(seen.append)
    for _ in range(3):
        assert not (await call(ctx)).denied
    await state.aclose()
    assert len(upstream.seen) == 4
    assert sum(s.startswith("BEGIN") for s in seen) == 3 and all(s == "BEGIN IMMEDIATE" for s in seen if "BEGIN" in s)
    assert sum(s == "COMMIT" for s in seen) == 3
    before_write = seen[: seen.index("BEGIN IMMEDIATE")]
    assert not [s for s in before_write if "rate_" in s]  # no usage read before the decision


async def test_a_call_whose_allow_row_cannot_be_written_adds_no_label() -> None:
    state, sink = MemoryState(), RecordingSink()
    sink.fail_when = lambda e: e.kind == EventKind.CALL_DECISION and e.decision == "allow"
    call, upstream = pipeline(labelling({"get_ticket": ["private"]}), sink, state=state)
    outcome = await call(ctx_in(tool="get_ticket"))
    assert outcome.denial is not None and outcome.denial.code == ReasonCode.AUDIT_UNAVAILABLE
    assert upstream.seen == []
    flow = await state.flow(flow_ref(ctx_in()).id)
    assert dict(flow.labels) == {}
    assert outcome.decision is not None
    assert [(c.decision, c.decision_id) for c in flow.history] == [("deny", outcome.decision.decision_id)]


async def test_a_forwarded_call_keeps_its_labels_whatever_the_upstream_answered() -> None:
    state = MemoryState()
    failing = RecordingUpstream(Outcome(error=types.ErrorData(code=-32001, message="upstream failed")))
    call, upstream = pipeline(labelling({"get_ticket": ["private"]}), RecordingSink(), state=state, upstream=failing)
    outcome = await call(ctx_in(tool="get_ticket"))
    assert outcome.error is not None and len(upstream.seen) == 1
    flow = await state.flow(flow_ref(ctx_in()).id)
    assert set(flow.labels) == {"private"} and [c.decision for c in flow.history] == ["allow"]


async def test_labels_apply_before_the_upstream_answers() -> None:
    """A call running in parallel in the same flow already sees the labels of a forwarded call in flight."""
    state = MemoryState()
    seen_inside: list[Flow] = []

    class Peek(RecordingUpstream):
        async def __call__(self, ctx: CallContext) -> Outcome:
            seen_inside.append(await state.flow(flow_ref(ctx).id))
            return await super().__call__(ctx)

    call, _ = pipeline(labelling({"get_ticket": ["private"]}), RecordingSink(), state=state, upstream=Peek())
    await call(ctx_in(tool="get_ticket"))
    assert set(seen_inside[0].labels) == {"private"}


# --------------------------------------------------------------------------- fail closed
class BrokenFlows(MemoryState):
    """A store whose flows fail as configured (``read``/``write``/``full``); counters work."""

    def __init__(self, *, read: bool = False, write: bool = False, full: bool = False) -> None:
        super().__init__()
        self.read, self.write, self.full = read, write, full
        self.admitted = 0

    async def flow(self, flow_id: str) -> Flow:
        if self.read:
            raise StateError("the state store /srv/x cannot read the flow: disk I/O error", cause="disk I/O error")
        return await super().flow(flow_id)

    async def record_call(self, ref: FlowRef, call: FlowCall) -> FlowTicket | FlowFull:
        if self.write:
            raise StateError("the state store /srv/x cannot record: database is locked", cause="database is locked")
        if self.full:
            return FlowFull("principal 'alice' already has 3 live flows (at most 3)")
        return await super().record_call(ref, call)

    async def admit(self, limits: Any) -> Any:
        self.admitted += 1
        return await super().admit(limits)


async def test_a_flow_that_cannot_be_read_is_a_recorded_deny_before_policy() -> None:
    sink, engine = RecordingSink(), labelling({})
    call, upstream = pipeline(engine, sink, state=BrokenFlows(read=True))
    outcome = await call(ctx_in())
    d = outcome.denial
    assert d is not None and d.code == ReasonCode.STATE_UNAVAILABLE
    assert "flow of this call cannot be read (disk I/O error)" in d.reasons[1] and "/srv/x" not in d.reasons[1]
    assert upstream.seen == [] and engine.inputs == []
    (row,) = sink.events
    assert row.decision == "deny" and row.reasons == d.reasons


async def test_a_flow_that_cannot_be_recorded_is_a_recorded_deny_and_counts_nothing() -> None:
    sink = RecordingSink()
    state = BrokenFlows(write=True)
    limit: list[dict[str, Any]] = [{"key": "k", "limit": 5, "window_s": 60}]
    call, upstream = pipeline(labelling({"echo": ["private"]}, rate_limit=limit), sink, state=state)
    outcome = await call(ctx_in())
    d = outcome.denial
    assert d is not None and d.code == ReasonCode.STATE_UNAVAILABLE and "database is locked" in d.reasons[1]
    assert upstream.seen == [] and state.admitted == 0
    assert [(e.kind, e.decision) for e in sink.events] == [(EventKind.CALL_DECISION, "deny")]
    assert sink.events[0].reasons == d.reasons


async def test_a_flow_past_its_bounds_is_a_flow_limit_deny() -> None:
    call, upstream = pipeline(labelling({}), RecordingSink(), state=BrokenFlows(full=True))
    d = (await call(ctx_in())).denial
    assert d is not None and d.code == ReasonCode.FLOW_LIMIT and "already has 3 live flows" in d.reasons[1]
    assert upstream.seen == []


# --------------------------------------------------------------------------- what a bundle without flows pays
class NoFlowsPlease(MemoryState):
    def __init__(self) -> None:
        super().__init__()
        self.flow_calls = 0

    async def flow(self, flow_id: str) -> Flow:
        self.flow_calls += 1
        return await super().flow(flow_id)

    async def record_call(self, ref: FlowRef, call: FlowCall) -> FlowTicket | FlowFull:
        self.flow_calls += 1
        return await super().record_call(ref, call)


def _bundle(tmp: Path, rego: str, name: str = "b") -> Path:
    root = tmp / name
    root.mkdir()
    (root / "p.rego").write_text(rego)
    (root / "data.json").write_text("{}")
    return root


ALLOW = 'package mcp_guard\n\nimport rego.v1\n\ndecision := {"allow": true, "reasons": ["ok"], "obligations": {}}\n'
ALLOW_AFTER_READ = (
    "package mcp_guard\n\nimport rego.v1\n\n"
    'decision := {"allow": true, "reasons": ["ok"], "obligations": {"labels": ["private"]}} '
    "if count(input.context.flow.history) >= 0\n"
)


async def test_a_bundle_that_never_mentions_flows_reads_and_writes_none(tmp_path: Path) -> None:
    engine = EmbeddedEngine(load_bundle(_bundle(tmp_path, ALLOW)))
    state = NoFlowsPlease()
    call, upstream = pipeline(engine, RecordingSink(), state=state)
    for _ in range(3):
        assert not (await call(ctx_in())).denied
    assert state.flow_calls == 0 and len(upstream.seen) == 3
    # a hot reload to a bundle that uses flows switches tracking on
    engine.reload(load_bundle(_bundle(tmp_path, ALLOW_AFTER_READ, "b2")))
    assert not (await call(ctx_in())).denied
    assert state.flow_calls == 2  # one read, one record
    assert set((await state.flow(flow_ref(ctx_in()).id)).labels) == {"private"}


async def test_labels_from_a_bundle_that_does_not_read_flows_are_still_recorded() -> None:
    """The handler records any labels obligation, whatever FlowUse guessed (ctx.flow is then None)."""
    state = MemoryState()
    stage = TrackFlow(state, lambda: False)
    enforce = EnforceObligations([LabelsObligation(state)])
    ctx = replace(ctx_in(), decision=Decision(allow=True, obligations={"labels": ["private"]}))
    assert not (await enforce(ctx, lambda c: _forwarded(c))).denied
    assert set((await state.flow(flow_ref(ctx).id)).labels) == {"private"}
    assert await stage(ctx_in(), lambda c: _forwarded(c)) == Outcome(result={})


async def _forwarded(ctx: CallContext) -> Outcome:
    assert ctx.flow is None  # not read
    return Outcome(result={})


def test_whether_a_bundle_uses_flows() -> None:
    assert bundle_uses_flows({"a.rego": "x := input.context.flow.labels"})
    assert bundle_uses_flows({"a.rego": 'o := {"labels": ["private"]}'})
    assert bundle_uses_flows({"data.json": '{"flows": {"labels": []}}'})
    assert not bundle_uses_flows({"a.rego": "allow if input.tool == 'workflow_run'", "data.json": '{"flows": 1}'})
    assert bundle_uses_flows({rel: f.text for f in load_bundle(BUNDLE).files for rel in [f.rel]})


def test_an_engine_whose_bundle_is_not_held_is_assumed_to_use_flows() -> None:
    class Opa:
        bundle = None  # OPA serving its own policies

    assert FlowUse(Opa())() is True
    assert FlowUse(FunctionEngine(lambda _i: Decision(allow=True)))() is True


# --------------------------------------------------------------------------- the default bundle's trifecta
def _agent_call(session: str, server: str, tool: str, args: dict[str, Any], annotations: dict[str, Any]) -> CallContext:
    base = call_ctx(server=server, tool=tool, arguments=args)
    return replace(
        base,
        principal=Principal("local-agent", ("developer",)),
        session=SessionInfo(session, "http"),
        tool_info=ToolInfo(annotations=annotations),
    )


READ = ("tickets", "get_ticket", {"id": 7}, {"readOnlyHint": True})
FETCH = ("fetch", "fetch", {"url": "https://example.com/page"}, {"readOnlyHint": True, "openWorldHint": True})
POST = ("everything", "echo", {"message": "our customer list"}, {"openWorldHint": True})


async def test_the_default_bundle_denies_egress_after_private_and_untrusted_naming_the_decisions() -> None:
    call, upstream = pipeline(EmbeddedEngine(load_bundle(BUNDLE)), RecordingSink(), state=MemoryState())
    read = await call(_agent_call("s1", *READ))
    fetched = await call(_agent_call("s1", *FETCH))
    assert read.decision is not None and fetched.decision is not None
    assert not read.denied and not fetched.denied, (read.denial, fetched.denial)
    post = await call(_agent_call("s1", *POST))
    d = post.denial
    assert d is not None and d.code is None  # the policy's own deny
    (reason,) = [r for r in d.reasons if "egress sink" in r]
    assert f"'private' (decision {read.decision.decision_id}: tickets get_ticket)" in reason
    assert f"'untrusted' (decision {fetched.decision.decision_id}: fetch fetch)" in reason
    assert [c.target for c in upstream.seen] == ["get_ticket", "fetch"]
    fresh = await call(_agent_call("s2", *POST))
    assert not fresh.denied, fresh.denial
    assert [c.target for c in upstream.seen] == ["get_ticket", "fetch", "echo"]


async def test_the_default_bundle_lets_one_leg_of_the_trifecta_through() -> None:
    call, _ = pipeline(EmbeddedEngine(load_bundle(BUNDLE)), RecordingSink(), state=MemoryState())
    assert not (await call(_agent_call("s1", *READ))).denied
    assert not (await call(_agent_call("s1", *POST))).denied  # private only: a post may go out


# A rule (never firing) that reads the flow's history: with it the bundle's decision can see the history.
READS_HISTORY = """package mcp_guard
import rego.v1
deny contains "a long flow" if count(input.context.flow.history) > 1000000
"""


def _shipped_with(tmp: Path, extra: str | None) -> EmbeddedEngine:
    root = tmp / ("extra" if extra else "shipped")
    shutil.copytree(BUNDLE, root)
    if extra:
        (root / "mcp_guard" / "extra.rego").write_text(extra)
    return EmbeddedEngine(load_bundle(root))


def test_the_history_is_read_only_when_a_decision_can_read_it(tmp_path: Path) -> None:
    shipped, reading = _shipped_with(tmp_path, None), _shipped_with(tmp_path, READS_HISTORY)
    assert not HistoryRead(shipped)()
    assert not HistoryRead(CachedEngine(shipped, DecisionCacheSettings()))()  # the cache's read set
    assert HistoryRead(reading)()
    assert HistoryRead(shipped, reading)()  # the shadow candidate is asked the same input
    assert HistoryRead(FunctionEngine(lambda _i: Decision(allow=True)))()  # a bundle not held: assumed read
    shipped.reload(reading.bundle)  # re-derived for the engine's new bundle
    assert HistoryRead(shipped)()


@pytest.mark.parametrize("reads", [False, True])
async def test_the_shipped_bundle_gets_no_history_and_its_rows_say_so(tmp_path: Path, reads: bool) -> None:
    """The shipped bundle reads a flow's labels, never its history: its decisions get ``history: []``, their rows
    name the history omitted, and the store still records every call — a bundle that reads the history gets it
    whole, and its rows omit nothing."""
    engine = _shipped_with(tmp_path, READS_HISTORY if reads else None)
    state, sink = MemoryState(), RecordingSink()
    call, _ = pipeline(engine, sink, state=state)
    ctx = replace(call_ctx(server="tickets", tool="get_ticket", arguments={"id": 1}), principal=Principal("alice"))
    for _ in range(3):
        assert not (await call(ctx)).denied
    rows = [e for e in sink.of_kind(EventKind.CALL_DECISION) if e.decision == "allow"]
    records = [e.details["policy"] for e in rows]
    histories = [json.loads(r["input_json"])["context"]["flow"]["history"] for r in records]
    labels = [json.loads(r["input_json"])["context"]["flow"]["labels"] for r in records]
    assert labels == [[], ["private"], ["private"]]  # get_ticket labels its flow private
    if reads:
        assert [len(h) for h in histories] == [0, 1, 2] and all("omitted" not in r for r in records)
    else:
        assert histories == [[], [], []] and all(r["omitted"] == ["context.flow.history"] for r in records)
    assert len((await state.flow(flow_ref(ctx).id)).history) == 3  # recorded either way
