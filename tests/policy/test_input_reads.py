"""The read set of a bundle (policy/reads.py): what the decision rule can observe of the input, or why not cacheable."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.pipeline.flow import HistoryRead
from mcp_guard.pipeline.ratelimit import UsageRead
from mcp_guard.policy import reads
from mcp_guard.policy.bundle import Bundle, load_bundle
from mcp_guard.policy.cache import CachedEngine
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.policy.reads import InputReads, input_reads, reads_path
from mcp_guard.settings import DecisionCacheSettings

REPO = Path(__file__).resolve().parents[2]


def reads_of(tmp_path: Path, rego: str) -> InputReads:
    (tmp_path / "t.rego").write_text("package t\n\nimport rego.v1\n\n" + rego)
    return input_reads(load_bundle(tmp_path), ("t", "decision"))


def test_default_bundle_reads_the_call_not_its_counters_or_history() -> None:
    r = input_reads(load_bundle(REPO / "policies" / "rego"), ("mcp_guard", "decision"))
    assert r.cacheable
    paths = {".".join(p) for p in r.paths}
    assert {"action", "arguments", "principal.id", "principal.roles", "server", "tool"} <= paths
    assert {"context.flow.labels", "context.flow.labeled_by", "context.urls", "context.secrets_seen"} <= paths
    assert "input_responses" in paths  # the argument rules check an accepted form's fields too
    # usage() in limits.rego is never called; the flow's id and history are never read; neither is the time
    assert not any(p.startswith(("context.usage", "context.time", "session")) for p in paths)
    assert "context.flow" not in paths and "context" not in paths


def test_constant_prefix_of_each_ref_and_the_whole_subtree_at_a_variable_index(tmp_path: Path) -> None:
    r = reads_of(
        tmp_path,
        """decision := {"allow": allow}
allow if {
    f := input.a            # an alias: the whole of a is read
    f.b == 1
    input.c.d[k] == 2       # a variable index: all of c.d
    some x in input.e.list  # iteration: all of e.list
    x == k
    walk(input.g, [_, v])   # a walk: all of g
    v == 3
    input.h["lit"].i == 4   # a literal index is a field
}
""",
    )
    assert r.paths == (("a",), ("c", "d"), ("e", "list"), ("g",), ("h", "lit", "i"))


def test_rules_the_decision_cannot_reach_are_not_read(tmp_path: Path) -> None:
    r = reads_of(
        tmp_path,
        """decision := {"allow": input.x == 1}
unused := input.secret
helper(k) := input.usage[k]
""",
    )
    assert r.paths == (("x",),)


def test_functions_and_dynamic_data_refs_are_followed(tmp_path: Path) -> None:
    r = reads_of(
        tmp_path,
        """decision := {"allow": ok(1)}
ok(n) if data.t[name] == n
name := input.which
p := input.p
""",
    )
    assert r.paths == (("p",), ("which",))  # data.t[name] may read any rule of the package


@pytest.mark.parametrize(
    ("rego", "why"),
    [
        ('decision := {"allow": time.now_ns() > 0}', "time.now_ns"),
        ('decision := {"allow": rand.intn("x", 2) == 1}', "rand.intn"),
        ('decision := {"allow": f(input)}\nf(x) := true', "whole input"),
        ('decision := {"allow": input[k] == 1}\nk := "a"', "whole input"),
        ('decision := {"allow": object.get(input, "a", 0) == 1}', "whole input"),
        ('decision := {"allow": true} if {\n    a with input.x as 1\n}\na if input.x == 1', "with input"),
        ('decision := {"allow": h}\nh if { t := time.now_ns(); t > 0 }', "time.now_ns"),
        (
            'decision := {"allow": true} if {\n    a with f as g\n}\na if f(1)\nf(x) := x\ng(x) := input.secret',
            "replaces a function",
        ),
    ],
)
def test_what_cannot_be_keyed_is_not_cached(tmp_path: Path, rego: str, why: str) -> None:
    r = reads_of(tmp_path, rego)
    assert not r.cacheable
    assert r.uncacheable is not None and why in r.uncacheable


def test_an_import_of_input_reads_the_imported_subtree(tmp_path: Path) -> None:
    (tmp_path / "t.rego").write_text(
        'package t\n\nimport rego.v1\nimport input.principal as who\n\ndecision := {"allow": who.id == "a"}\n'
    )
    r = input_reads(load_bundle(tmp_path), ("t", "decision"))
    assert r.paths == (("principal",),)


def test_a_path_is_read_by_a_read_of_it_of_inside_it_or_around_it() -> None:
    history = ("context", "flow", "history")
    assert reads_path(InputReads((("context", "flow", "history"),)), history)
    assert reads_path(InputReads((("context", "flow", "history", "0"),)), history)  # inside it
    assert reads_path(InputReads((("context", "flow"),)), history)  # around it: the whole flow
    assert reads_path(InputReads(((),)), history)  # the whole input
    assert not reads_path(InputReads((("context", "flow", "labels"), ("context", "usage"), ("tool",))), history)
    assert not reads_path(InputReads(()), history)
    assert reads_path(InputReads((), "reads the whole input"), history)  # uncacheable: assumed to read it


def test_a_bundle_is_analysed_once_for_the_cache_the_usage_and_the_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision cache, the usage read and the history read ask the same question of the active bundle: one
    analysis (a compile of the bundle, ~50 ms) answers all three, and a reload's new bundle is analysed anew."""
    analysed: list[object] = []
    real = reads.input_reads

    def counting(bundle: Bundle, decision: tuple[str, ...]) -> InputReads:
        analysed.append(bundle)
        return real(bundle, decision)

    monkeypatch.setattr(reads, "input_reads", counting)
    bundle = load_bundle(REPO / "policies" / "rego")
    engine = CachedEngine(EmbeddedEngine(bundle), DecisionCacheSettings())
    assert not UsageRead(engine)() and not HistoryRead(engine)()
    assert analysed == [bundle]
    again = load_bundle(REPO / "policies" / "rego")
    engine.reload(again)
    assert not UsageRead(engine)() and not HistoryRead(engine)()
    assert analysed == [bundle, again]
