"""The shadow stage: a candidate bundle decides every policy-decided call too, never enforces, and every
disagreement is audited (policy.shadow_diff, with the decision id) and counted; its failures never reach a call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipeline_kit import call_ctx, registry

from mcp_guard.frontend.ops import OpsSources, metrics_text
from mcp_guard.pipeline.build import pipeline_stages
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.observe import CallMetrics
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.pipeline.shadow import ShadowStats
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.state import MemoryState
from mcp_guard.testing import FunctionEngine, RecordingSink, RecordingUpstream
from mcp_guard.types import Decision, EventKind, PolicyInput, ReasonCode

pytestmark = pytest.mark.anyio

CURRENT = """package t
import rego.v1
default decision := {"allow": false, "reasons": ["no"]}
decision := {"allow": true} if input.tool != "rm"
decision := {"allow": false, "reasons": ["rm is off"]} if input.tool == "rm"
"""
CANDIDATE = """package t
import rego.v1
default decision := {"allow": false, "reasons": ["no"]}
plans if input.arguments.text == "secret plans"
decision := {"allow": true} if { input.tool != "rm"; not plans }
decision := {"allow": false, "reasons": ["not that text"]} if { input.tool != "rm"; plans }
decision := {"allow": true} if input.tool == "rm"
"""


def engine(tmp: Path, name: str, rego: str) -> EmbeddedEngine:
    root = tmp / name
    root.mkdir()
    (root / "t.rego").write_text(rego)
    return EmbeddedEngine(load_bundle(root), decision="t/decision", timeout_ms=5000)


def chain(primary: Any, shadow: Any, sink: RecordingSink, stats: ShadowStats) -> tuple[Any, RecordingUpstream]:
    up = RecordingUpstream()
    stages = pipeline_stages(
        engine=primary,
        sink=sink,
        registry=registry(),
        secrets=NO_SECRETS,
        state=MemoryState(),
        shadow=shadow,
        shadow_stats=stats,
    )
    return build_chain(stages, up), up


async def test_disagreements_are_audited_and_counted_but_never_enforced(tmp_path: Path) -> None:
    sink, stats = RecordingSink(), ShadowStats()
    call, up = chain(engine(tmp_path, "cur", CURRENT), engine(tmp_path, "cand", CANDIDATE), sink, stats)
    texts = ["hi", "secret plans", "hello"]
    outcomes = [await call(call_ctx(tool="echo", arguments={"text": t})) for t in texts]
    denied = await call(call_ctx(tool="rm", arguments={"text": "x"}))
    assert [o.decision.allow for o in outcomes if o.decision] == [True, True, True]  # the candidate never enforces
    assert denied.denied and len(up.seen) == 3
    diffs = sink.of_kind(EventKind.POLICY_SHADOW_DIFF)
    assert [d.details["change"] for d in diffs if d.details] == ["allow→deny", "deny→allow"]
    decisions = {e.decision_id for e in sink.of_kind(EventKind.CALL_DECISION)}
    assert {d.decision_id for d in diffs} <= decisions and diffs[0].decision_id == outcomes[1].decision.decision_id  # type: ignore[union-attr]
    assert diffs[0].details and diffs[0].details["shadow"]["reasons"] == ["not that text"]
    assert diffs[0].decision == "allow"  # the enforced decision is what happened
    assert stats.decided == 4 and stats.errors == 0 and dict(stats.diffs) == {"allow→deny": 1, "deny→allow": 1}


async def test_a_failing_candidate_is_counted_and_the_call_is_unaffected(tmp_path: Path) -> None:
    def boom(_: PolicyInput) -> Decision:
        raise RuntimeError("candidate exploded")

    sink, stats = RecordingSink(), ShadowStats()
    call, up = chain(engine(tmp_path, "cur", CURRENT), FunctionEngine(boom), sink, stats)
    outcome = await call(call_ctx(tool="echo"))
    assert outcome.decision is not None and outcome.decision.allow and len(up.seen) == 1
    assert stats.errors == 1 and stats.decided == 0 and not sink.of_kind(EventKind.POLICY_SHADOW_DIFF)


async def test_a_candidate_engine_error_is_an_error_not_a_disagreement(tmp_path: Path) -> None:
    sink, stats = RecordingSink(), ShadowStats()
    broken = FunctionEngine(lambda _: Decision.deny(ReasonCode.ENGINE_ERROR))
    call, _ = chain(engine(tmp_path, "cur", CURRENT), broken, sink, stats)
    await call(call_ctx(tool="echo"))
    assert stats.errors == 1 and not sink.of_kind(EventKind.POLICY_SHADOW_DIFF)


async def test_without_a_candidate_the_stage_passes_through(tmp_path: Path) -> None:
    sink, stats = RecordingSink(), ShadowStats()
    call, up = chain(engine(tmp_path, "cur", CURRENT), None, sink, stats)
    await call(call_ctx(tool="echo"))
    assert len(up.seen) == 1 and not stats.enabled and stats.decided == 0


async def test_metrics_page_shows_the_shadow_counters(tmp_path: Path) -> None:
    stats = ShadowStats()
    call, _ = chain(engine(tmp_path, "cur", CURRENT), engine(tmp_path, "cand", CANDIDATE), RecordingSink(), stats)
    await call(call_ctx(tool="rm", arguments={"text": "x"}))
    src = OpsSources(
        calls=CallMetrics(),
        engine=None,
        engine_name="embedded",
        audit=None,
        audit_backend="sqlite",
        upstreams=list,
        session_transports=list,
        scrub=str,
        shadow=stats,
    )
    text = metrics_text(src)
    assert 'mcp_guard_policy_shadow_diffs_total{change="deny→allow"} 1' in text
    assert 'mcp_guard_policy_shadow_diffs_total{change="allow→deny"} 0' in text
    assert "mcp_guard_policy_shadow_errors_total 0" in text
