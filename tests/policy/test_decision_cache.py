"""The decision cache (policy/cache.py): cached and uncached decisions agree on thousands of generated inputs,
and what must never be remembered is not."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from decision_corpus import generated_inputs

from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.cache import CachedEngine, _at, decision_key, project
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.settings import DecisionCacheSettings
from mcp_guard.types import Decision, ReasonCode

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "policies" / "rego"
RESULTS_EXAMPLE = REPO / "policies" / "examples" / "results" / "results.rego"


def _same(a: Decision, b: Decision) -> bool:
    return (a.allow, a.reasons, dict(a.obligations), a.revision, a.code) == (
        b.allow,
        b.reasons,
        dict(b.obligations),
        b.revision,
        b.code,
    )


def differential(bundle_dir: Path, decision: str, docs: list[dict[str, Any]]) -> CachedEngine:
    bundle = load_bundle(bundle_dir)
    plain = EmbeddedEngine(bundle, decision=decision, timeout_ms=60_000)
    cached = CachedEngine(EmbeddedEngine(bundle, decision=decision, timeout_ms=60_000), DecisionCacheSettings())
    mismatches = []
    ids: set[str] = set()
    for i, doc in enumerate(docs):
        got, want = cached.evaluate_sync(doc), plain.evaluate_sync(doc)
        if not _same(got, want):
            mismatches.append((i, got, want))
        ids.add(got.decision_id)
    assert mismatches == []
    assert len(ids) == len(docs)  # a remembered decision is still a new decision
    return cached


def test_default_bundle_cached_equals_uncached_on_generated_inputs() -> None:
    docs = generated_inputs(4000)
    cached = differential(DEFAULT, "mcp_guard/decision", docs)
    s = cached.stats
    assert s.hits + s.misses + s.uncacheable == len(docs)
    # the corpus repeats keys on purpose: the comparison above covered answers from memory, not only misses
    assert s.hits > 500 and s.misses > 500


def test_result_rule_example_cached_equals_uncached(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT, bundle)
    shutil.copy(RESULTS_EXAMPLE, bundle / "mcp_guard" / "results.rego")
    cached = differential(bundle, "mcp_guard/decision_with_results", generated_inputs(2500, seed=7, results=True))
    assert ("result", "content") in cached.reads.paths and cached.stats.hits > 300


def test_a_bundle_reading_usage_and_the_whole_flow_keys_on_them(tmp_path: Path) -> None:
    """A tiered rule on the counter and a rule over the flow's history: both are part of the key."""
    (tmp_path / "t.rego").write_text(
        """package t

import rego.v1

decision := {"allow": allow, "reasons": ["r"]}

default allow := false

allow if {
    f := input.context.flow
    count(object.get(f, "history", [])) < 2
    object.get(input.context.usage, key, 0) < 200
}

key := concat("|", ["tool_calls", "x", input.server, input.tool])
"""
    )
    cached = differential(tmp_path, "t/decision", generated_inputs(2000, seed=3))
    assert ("context", "flow") in cached.reads.paths and ("context", "usage") in cached.reads.paths


def _engine(tmp_path: Path, rego: str, **settings: Any) -> CachedEngine:
    (tmp_path / "t.rego").write_text("package t\n\nimport rego.v1\n\n" + rego)
    inner = EmbeddedEngine(load_bundle(tmp_path), decision="t/decision")
    return CachedEngine(inner, DecisionCacheSettings(**settings))


def test_a_bundle_reading_the_time_is_asked_every_time(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'decision := {"allow": time.now_ns() > 0}')
    assert not engine.reads.cacheable
    for _ in range(3):
        assert engine.evaluate_sync({"x": 1}).allow
    assert engine.stats.hits == 0 and engine.stats.uncacheable == 3


def test_an_unanalysable_input_ref_is_not_cached(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'decision := {"allow": count(object.keys(input)) > 0}')
    assert not engine.reads.cacheable
    engine.evaluate_sync({"x": 1})
    engine.evaluate_sync({"x": 1})
    assert engine.stats.hits == 0


def test_fail_closed_denies_are_not_remembered(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'decision := {"allow": "yes"} if input.x == 1\n\ndecision := 7 if input.x == 2')
    for doc in ({"x": 1}, {"x": 1}, {"x": 2}, {"x": 2}, {"x": 3}, {"x": 3}):
        d = engine.evaluate_sync(doc)
        assert not d.allow and d.code in (ReasonCode.RESULT_INVALID, ReasonCode.POLICY_UNDEFINED)
    assert engine.stats.hits == 0


def test_a_hit_gets_its_own_decision_id_and_obligations(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'decision := {"allow": true, "obligations": {"o": [input.x]}}')
    first = engine.evaluate_sync({"x": 1, "session": "a"})
    first.obligations["o"].append("tampered")  # type: ignore[index]
    second = engine.evaluate_sync({"x": 1, "session": "b"})
    assert engine.stats.hits == 1
    assert second.decision_id != first.decision_id and second.obligations == {"o": [1]}


def test_absent_and_null_fields_are_different_keys(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'decision := {"allow": true, "reasons": [sprintf("%v", [object.get(input, "x", 0)])]}')
    assert not engine.reads.cacheable  # object.get(input, …) passes the whole input
    engine = _engine(
        tmp_path, 'decision := {"allow": true, "reasons": ["null"]} if input.x == null\nelse := {"allow": false}'
    )
    assert engine.evaluate_sync({"x": None}).allow
    assert not engine.evaluate_sync({}).allow


def test_ttl_and_size_bound_the_cache(tmp_path: Path) -> None:
    now = [0.0]
    (tmp_path / "t.rego").write_text('package t\n\nimport rego.v1\n\ndecision := {"allow": input.x > 0}\n')
    inner = EmbeddedEngine(load_bundle(tmp_path), decision="t/decision")
    engine = CachedEngine(inner, DecisionCacheSettings(size=2, ttl_s=10), clock=lambda: now[0])
    for x in (1, 2, 1):
        engine.evaluate_sync({"x": x})
    assert (engine.stats.hits, engine.stats.misses) == (1, 2)
    engine.evaluate_sync({"x": 3})  # evicts x=2, the least recently used
    engine.evaluate_sync({"x": 1})
    assert engine.stats.hits == 2
    engine.evaluate_sync({"x": 2})
    assert engine.stats.misses == 4
    now[0] = 11.0
    engine.evaluate_sync({"x": 1})
    assert engine.stats.misses == 5  # expired
    s = engine.stats
    # x=2 was pushed out by x=3, then x=3 by x=2; x=1 was found past its TTL (dropped, then asked and kept again)
    assert (s.evicted, s.expired, s.invalidated, engine.entries) == (2, 1, 0, 2)


def test_removals_are_counted_by_why_and_the_size_is_what_is_held(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'decision := {"allow": input.x > 0}', size=3)
    for x in (1, 2, 3, 4, 5):
        engine.evaluate_sync({"x": x})
    assert (engine.stats.misses, engine.stats.evicted, engine.entries) == (5, 2, 3)
    engine.evaluate_sync({"x": 5})
    assert (engine.stats.hits, engine.entries) == (1, 3)
    (tmp_path / "t.rego").write_text('package t\n\nimport rego.v1\n\ndecision := {"allow": input.x > 1}\n')
    engine.reload(load_bundle(tmp_path))  # a new revision: everything held is invalid
    assert (engine.stats.invalidated, engine.entries) == (3, 0)
    assert not engine.evaluate_sync({"x": 1}).allow
    assert (engine.stats.misses, engine.stats.expired, engine.entries) == (6, 0, 1)


def test_a_reload_drops_old_decisions_and_reanalyses(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'decision := {"allow": input.x == 1}')
    assert engine.evaluate_sync({"x": 1, "y": 5}).allow
    (tmp_path / "t.rego").write_text('package t\n\nimport rego.v1\n\ndecision := {"allow": input.y == 5}\n')
    engine.reload(load_bundle(tmp_path))
    assert engine.reads.paths == (("y",),)
    assert engine.evaluate_sync({"x": 2, "y": 5}).allow
    # a reload straight on the inner engine (not through the cache) is noticed too
    (tmp_path / "t.rego").write_text('package t\n\nimport rego.v1\n\ndecision := {"allow": input.z == 5}\n')
    engine.inner.reload(load_bundle(tmp_path))
    d = engine.evaluate_sync({"x": 2, "y": 5})
    assert not d.allow and d.revision == engine.revision and engine.reads.paths == (("z",),)


def test_an_oversized_key_is_asked_not_kept(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'decision := {"allow": count(input.big) > 0}', max_key_bytes=256)
    for _ in range(2):
        assert engine.evaluate_sync({"big": "x" * 1000}).allow
    assert engine.stats.hits == 0 and engine.stats.uncacheable == 2


async def test_async_evaluate_goes_through_the_cache(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'decision := {"allow": input.x == 1}')
    assert (await engine.evaluate_document({"x": 1})).allow
    assert (await engine.evaluate_document({"x": 1})).allow
    assert engine.stats.hits == 1


def test_the_projection_keeps_each_read_field_or_its_absence() -> None:
    paths = (("a",), ("c", "flow", "labels"), ("c", "urls"))
    doc = {"a": None, "b": 1, "c": {"flow": "tainted", "urls": {"u": {}}, "time": "t"}}
    values = [_at(doc, p) for p in paths]
    assert project(paths, values) == {"a": None, "c": {"urls": {"u": {}}}}
    assert decision_key(values, max_bytes=1000) == '[[null],[],[{"u":{}}]]'
