"""The composed pipeline (mcp_guard.pipeline.in_use): only the stages in use, recomposed when the bundle
changes — a reload that turns a feature on takes effect on the next call, one that turns
it off drops the stage — and, with stages dropped, the same outcomes and audit rows as the whole stage list."""

from __future__ import annotations

import json
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx2
import pytest
from pipeline_kit import SETTINGS, call_ctx, registry

from mcp_guard.pipeline.build import build_pipeline, pipeline_stages
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallContext, CallNext, Interceptor, Outcome
from mcp_guard.pipeline.exchange import ExchangeToken
from mcp_guard.pipeline.flow import LabelsObligation, TrackFlow, flow_ref
from mcp_guard.pipeline.in_use import InUsePipeline
from mcp_guard.pipeline.obligations import EnforceObligations
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.pipeline.shadow import ShadowPolicy
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.settings import Settings, UpstreamSettings, parse_settings
from mcp_guard.state import MemoryState
from mcp_guard.testing import NullListener, RecordingSink, RecordingUpstream, allow_all
from mcp_guard.types import AuditEvent, AuthInfo, Principal, ReasonCode, SubjectToken
from mcp_guard.upstream.registry import Registry
from mcp_guard.upstream.token_exchange import TokenExchanger

pytestmark = pytest.mark.anyio

HEAD = "package mcp_guard\n\nimport rego.v1\n\n"
ALLOW = HEAD + 'decision := {"allow": true, "reasons": ["ok"], "obligations": {}}\n'
# Defined only with a flow in the input: a call allowed by it had its flow read.
FLOWS = HEAD + (
    'decision := {"allow": true, "reasons": ["ok"], "obligations": {"labels": ["private"]}} '
    "if count(input.context.flow.history) >= 0\n"
)
RESULTS = HEAD + (
    'decision := {"allow": false, "reasons": ["no results"], "obligations": {}} if input.action == "tools/result"\n'
    'else := {"allow": true, "reasons": ["ok"], "obligations": {}}\n'
)


def _bundle(tmp: Path, name: str, rego: str) -> Path:
    root = tmp / name
    root.mkdir()
    (root / "p.rego").write_text(rego)
    (root / "data.json").write_text("{}")
    return root


def _names(pipe: InUsePipeline) -> list[str]:
    return [type(s).__name__ for s in pipe.stages]


def _composed(engine: Any, state: MemoryState, reg: Registry | None = None) -> tuple[InUsePipeline, RecordingUpstream]:
    up = RecordingUpstream()
    pipe = build_pipeline(
        engine=engine, sink=RecordingSink(), registry=reg or registry(), secrets=NO_SECRETS, state=state, terminal=up
    )
    return pipe, up


# --------------------------------------------------------------------------- a reload turns a stage on and off
async def test_a_reload_that_turns_flows_on_tracks_the_next_call_and_one_that_turns_them_off_drops_the_stage(
    tmp_path: Path,
) -> None:
    engine = EmbeddedEngine(load_bundle(_bundle(tmp_path, "allow", ALLOW)))
    state = MemoryState()
    pipe, up = _composed(engine, state)
    assert "TrackFlow" not in _names(pipe)
    labels = next(s for s in pipe.stages if isinstance(s, EnforceObligations))._handlers
    assert not next(h for h in labels if isinstance(h, LabelsObligation)).always
    assert not (await pipe(call_ctx())).denied
    assert not (await state.flow(flow_ref(call_ctx()).id)).history

    engine.reload(load_bundle(_bundle(tmp_path, "flows", FLOWS)))
    first = await pipe(call_ctx())
    assert not first.denied, first.denial  # the policy saw context.flow: the flow was read
    flow = await state.flow(flow_ref(call_ctx()).id)
    assert set(flow.labels) == {"private"} and len(flow.history) == 1  # and the call recorded in it
    assert "TrackFlow" in _names(pipe)

    engine.reload(load_bundle(_bundle(tmp_path, "allow-again", ALLOW)))
    assert not (await pipe(call_ctx())).denied
    assert "TrackFlow" not in _names(pipe)
    assert len((await state.flow(flow_ref(call_ctx()).id)).history) == 1  # neither read nor recorded
    assert len(up.seen) == 3


class _HeldUpstream(RecordingUpstream):
    """A recording upstream that holds its first call until the test lets it answer: a call that is out."""

    def __init__(self) -> None:
        super().__init__()
        self.out = anyio.Event()
        self.answer = anyio.Event()

    async def __call__(self, ctx: CallContext) -> Outcome:
        if not self.answer.is_set():
            self.out.set()
            await self.answer.wait()
        return await super().__call__(ctx)


async def test_a_result_rule_activated_while_a_call_is_out_judges_its_result_and_the_next(tmp_path: Path) -> None:
    """ResultPolicy stays composed with no result rule loaded and asks when the result arrives (as it always did):
    a bundle with a result rule activated while a call is out withholds that call's result, and the next one's;
    removed again, results pass."""
    engine = EmbeddedEngine(load_bundle(_bundle(tmp_path, "allow", ALLOW)))
    up = _HeldUpstream()
    pipe = build_pipeline(
        engine=engine, sink=RecordingSink(), registry=registry(), secrets=NO_SECRETS, state=MemoryState(), terminal=up
    )
    assert "ResultPolicy" in _names(pipe)
    outcomes: list[Outcome] = []

    async def call() -> None:
        outcomes.append(await pipe(call_ctx()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        with anyio.fail_after(10):
            await up.out.wait()  # decided under the bundle without a result rule, now at the upstream
        engine.reload(load_bundle(_bundle(tmp_path, "results", RESULTS)))
        up.answer.set()
    (held,) = outcomes
    assert held.denial is not None and held.denial.code is ReasonCode.RESULT_WITHHELD
    withheld = await pipe(call_ctx())
    assert withheld.denial is not None and withheld.denial.code is ReasonCode.RESULT_WITHHELD

    engine.reload(load_bundle(_bundle(tmp_path, "allow-again", ALLOW)))
    assert not (await pipe(call_ctx())).denied
    assert len(up.seen) == 3  # the withheld calls ran too


USAGE = HEAD + (
    'key := concat("|", ["tool_calls", input.principal.id, input.server, input.tool])\n'
    'decision := {"allow": false, "reasons": ["used already"], "obligations": {}} if input.context.usage[key] >= 1\n'
    'else := {"allow": true, "reasons": ["ok"], "obligations": {"rate_limit": [{"key": key, "limit": 9, '
    '"window_s": 60}]}}\n'
)
LIMITS = {
    "mcp_guard_config": {
        "limits": {"rate": [{"name": "tool_calls", "by": ["principal", "server", "tool"], "limit": 9, "window_s": 60}]}
    }
}


async def test_a_reload_that_declares_a_limit_the_policy_reads_gives_the_next_call_its_usage(tmp_path: Path) -> None:
    engine = EmbeddedEngine(load_bundle(_bundle(tmp_path, "allow", ALLOW)))
    pipe, _ = _composed(engine, MemoryState())
    assert _authorize(pipe)._usage is None  # type: ignore[attr-defined]
    root = _bundle(tmp_path, "usage", USAGE)
    (root / "data.json").write_text(json.dumps(LIMITS))
    engine.reload(load_bundle(root))
    assert not (await pipe(call_ctx())).denied  # usage 0, then counted
    second = await pipe(call_ctx())
    assert second.denial is not None and second.denial.reasons == ("used already",)  # the count was read
    assert _authorize(pipe)._usage is not None  # type: ignore[attr-defined]


def _authorize(pipe: InUsePipeline) -> Interceptor:
    return next(s for s in pipe.stages if type(s).__name__ == "Authorize")


def test_a_shadow_candidate_is_composed_and_none_is_not() -> None:
    for shadow in (allow_all(), None):
        pipe = build_pipeline(
            engine=allow_all(),
            sink=RecordingSink(),
            registry=registry(),
            secrets=NO_SECRETS,
            state=MemoryState(),
            shadow=shadow,
            terminal=RecordingUpstream(),
        )
        assert ("ShadowPolicy" in _names(pipe)) is (shadow is not None)


# --------------------------------------------------------------------------- a config reload adds token exchange
AUDIENCE = "https://rep.example/mcp"
REP = {
    "transport": "http",
    "url": AUDIENCE,
    "token_exchange": {
        "token_url": "https://idp.example/token",
        "client_id": "gw",
        "client_secret": "gw",
        "audience": AUDIENCE,
        "scopes": ["reports:read"],
    },
}


def _with_rep(base: Settings) -> Settings:
    return parse_settings(
        {
            "upstreams": {"rec": {"command": "never-started"}, "rep": REP},
            "secrets": {"gw": {"provider": "env", "name": "UNUSED_GW_SECRET"}},
        },
        source="<test>",
    )


def _exchanger_for(name: str, up: UpstreamSettings) -> TokenExchanger | None:
    async def handle(request: httpx2.Request) -> httpx2.Response:
        scope = parse_qs(request.content.decode())["scope"][0]
        return httpx2.Response(200, json={"access_token": "exchanged", "token_type": "Bearer", "scope": scope})

    async def secret() -> str:
        return "s3cret"

    assert up.token_exchange is not None
    return TokenExchanger(
        name, up.token_exchange, issuer=None, client_secret=secret, transport=httpx2.MockTransport(handle)
    )


def _jwt_call(server: str) -> CallContext:
    ctx = call_ctx(server=server)
    auth = AuthInfo(method="jwt", subject_token=SubjectToken("alice-at"))
    return replace(ctx, principal=Principal("alice", ("support",), auth=auth))


class _Gated:
    """allow_all(), whose first decision waits until the test opens the gate: a call held inside the pipeline."""

    def __init__(self) -> None:
        self._inner = allow_all()
        self.waiting = anyio.Event()
        self.gate = anyio.Event()

    async def evaluate(self, input: Any) -> Any:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return await self._inner.evaluate(input)


async def test_a_config_reload_that_adds_a_token_exchange_upstream_exchanges_a_call_already_inside() -> None:
    """ExchangeToken is composed with no token-exchange upstream at all, so a call that entered the pipeline
    before the reload (here held at its decision; in the product, parked for approval) still gets the caller's
    exchanged token — and the next one too."""
    reg = Registry(SETTINGS, NullListener(), exchanger_for=_exchanger_for)
    engine = _Gated()
    up = RecordingUpstream()
    pipe = build_pipeline(
        engine=engine, sink=RecordingSink(), registry=reg, secrets=NO_SECRETS, state=MemoryState(), terminal=up
    )
    assert "ExchangeToken" in _names(pipe)
    outcomes: list[Outcome] = []

    async def call() -> None:
        outcomes.append(await pipe(_jwt_call("rep")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        with anyio.fail_after(10):
            await engine.waiting.wait()  # inside the pipeline, before the stage
        await reg.reconfigure(_with_rep(SETTINGS), stop=[], start=["rep"])  # as Guard._apply_config does
        engine.gate.set()
    assert not outcomes[0].denied
    assert not (await pipe(_jwt_call("rep"))).denied
    assert [s.upstream_token.audience if s.upstream_token else None for s in up.seen] == [AUDIENCE, AUDIENCE]

    await reg.reconfigure(SETTINGS, stop=["rep"], start=[])
    assert not (await pipe(_jwt_call("rec"))).denied
    assert up.seen[-1].upstream_token is None


# --------------------------------------------------------------------------- what is dropped, and what is not
def test_with_nothing_in_use_only_the_core_stages_are_composed(tmp_path: Path) -> None:
    engine = EmbeddedEngine(load_bundle(_bundle(tmp_path, "allow", ALLOW)))
    pipe, _ = _composed(engine, MemoryState())
    assert _names(pipe) == [
        "Observe",
        "InspectArguments",
        "RecordOutcome",
        "PinCheck",
        "Authorize",
        "EnforceObligations",
        "ExchangeToken",
        "RecordDecision",
        "Redecide",
        "ResultPolicy",
        "Redact",
    ]
    assert _authorize(pipe)._usage is None  # type: ignore[attr-defined]  # no declared limit: no usage source


def test_an_engine_whose_bundle_is_not_held_keeps_flows_and_leaves_results_out() -> None:
    pipe, _ = _composed(allow_all(), MemoryState())
    names = _names(pipe)
    assert "TrackFlow" in names and "ResultPolicy" in names
    assert not any(isinstance(s, ShadowPolicy) for s in pipe.stages)
    assert any(isinstance(s, ExchangeToken) for s in pipe.stages)
    enforce = next(s for s in pipe.stages if isinstance(s, EnforceObligations))
    assert next(h for h in enforce._handlers if isinstance(h, LabelsObligation)).always
    assert any(isinstance(s, TrackFlow) for s in pipe.stages)


# --------------------------------------------------------------------------- differential: dropped == whole
# No word "flow" or that key spelled out: FlowUse says unused, and the labels obligation built from pieces
# must still be honoured.
MIXED = HEAD + (
    'key := concat("", ["lab", "els"])\n'
    'decision := {"allow": false, "reasons": ["no adding"], "obligations": {}} if input.tool == "add"\n'
    'else := {"allow": true, "reasons": ["x"], "obligations": {"no_such": 1}} if input.tool == "odd"\n'
    'else := {"allow": true, "reasons": ["t"], "obligations": {key: ["private"]}} if input.tool == "tag"\n'
    'else := {"allow": true, "reasons": ["s"], "obligations": {"upstream_scopes": ["a"]}} if input.tool == "narrow"\n'
    'else := {"allow": true, "reasons": ["r"], "obligations": {"rate_limit": [{"key": "k", "limit": 2, '
    '"window_s": 60}]}} if input.tool == "count"\n'
    'else := {"allow": true, "reasons": ["ok"], "obligations": {}}\n'
)
TOOLS = ("echo", "add", "odd", "tag", "narrow", "count", "count", "count", "tag", "echo")
_VARYING = {"event_id", "ts", "decision_id", "duration_ms"}
_TIME = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+(?:Z|\+00:00)")
_ID = re.compile(r"\b[0-9a-f]{32}\b")
_DURATION = re.compile(r"'duration_ms': [\d.]+")


def _row(event: AuditEvent) -> str:
    """The row with what differs between any two runs (ids, times, durations) blanked."""
    row = {f.name: getattr(event, f.name) for f in fields(event) if f.name not in _VARYING}
    text = _TIME.sub("T", repr(row))
    return _ID.sub("ID", _DURATION.sub("D", text))


def _outcome(o: Outcome) -> tuple[Any, ...]:
    d = o.denial
    return (o.denied, d.code if d else None, d.reasons if d else None, o.result)


async def _run(chain: CallNext, tools: tuple[str, ...]) -> list[tuple[Any, ...]]:
    return [_outcome(await chain(call_ctx(tool=t))) for t in tools]


async def test_the_composed_pipeline_gives_the_whole_lists_outcomes_rows_and_flows(tmp_path: Path) -> None:
    engine = EmbeddedEngine(load_bundle(_bundle(tmp_path, "mixed", MIXED)))
    runs = []
    for compose in (True, False):
        sink, state, up = RecordingSink(), MemoryState(), RecordingUpstream()
        if compose:
            pipe = build_pipeline(
                engine=engine, sink=sink, registry=registry(), secrets=NO_SECRETS, state=state, terminal=up
            )
            assert len(pipe.stages) < 14, "stages were dropped"
            chain: CallNext = pipe
        else:
            stages = pipeline_stages(engine=engine, sink=sink, registry=registry(), secrets=NO_SECRETS, state=state)
            assert len(stages) == 13
            chain = build_chain(stages, up)
        outcomes = await _run(chain, TOOLS)
        flow = await state.flow(flow_ref(call_ctx()).id)
        runs.append((outcomes, [_row(e) for e in sink.events], sorted(flow.labels), len(flow.history), len(up.seen)))
    composed, whole = runs
    assert composed == whole
    assert len(composed[1]) >= 2 * len(TOOLS) - 4, "rows were recorded"
    codes = [o[1] for o in composed[0]]
    assert ReasonCode.OBLIGATION_UNKNOWN in codes and ReasonCode.OBLIGATION_INVALID in codes
    assert ReasonCode.RATE_LIMITED in codes and composed[2] == ["private"]  # the pieced-together labels honoured
