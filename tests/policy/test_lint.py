"""The load-time static check (mcp_guard.policy.lint): what OPA rejects, the embedded engine refuses.

The differential half against a real OPA (every BROKEN bundle is rejected by ``opa check``, every
VALID one accepted) is tests/policy/test_lint_opa.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import regorus
from lint_corpus import BROKEN, VALID, BrokenBundle, ValidBundle

from mcp_guard.errors import PolicyError
from mcp_guard.policy.builtins import builtin_table, probe_embedded_missing
from mcp_guard.policy.bundle import Bundle, load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine, compile_bundle
from mcp_guard.policy.lint import LintCode, PolicyCheckError, RuleGraph, lint_ast
from mcp_guard.policy.runner import run_tests_embedded

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "rego"


def write(root: Path, files: dict[str, str]) -> Bundle:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return load_bundle(root)


def findings(bundle: Bundle, *, include_tests: bool = False, strict_locals: bool = False) -> list[str]:
    engine = compile_bundle(bundle, include_tests=include_tests, check=False)
    return [str(f) for f in lint_ast(engine.get_ast_as_json(), strict_locals=strict_locals)]


# ------------------------------------------------------------------------------ the broken corpus


def test_corpus_is_large_and_varied() -> None:
    assert len(BROKEN) >= 20
    assert len({c.name for c in BROKEN}) == len(BROKEN)
    assert len({c.code for c in BROKEN}) >= 15
    assert {c.code for c in BROKEN} <= {str(code) for code in LintCode}
    assert {"fail-open", "crash", "engine-error"} <= {c.effect for c in BROKEN}


@pytest.mark.parametrize("case", BROKEN, ids=lambda c: c.name)
def test_broken_bundle_is_refused_naming_file_line_and_rule(tmp_path: Path, case: BrokenBundle) -> None:
    bundle = write(tmp_path, case.files)
    # regorus on its own takes the bundle: this is a gap the check closes, not something it repeats
    compile_bundle(bundle, check=False)
    with pytest.raises(PolicyCheckError) as info:
        EmbeddedEngine(bundle)
    error = info.value
    got = [(Path(f.file).name, f.line, str(f.code), f.rule) for f in error.errors]
    # the first error is the one the case is about; any others are the same problem seen again
    assert got[0] == (case.file, case.line, case.code, case.rule), (case.why, [str(f) for f in error.errors])
    assert {code for _, _, code, _ in got} == {case.code}, [str(f) for f in error.errors]
    message = str(error)
    assert "\n" not in message
    assert f"{tmp_path / case.file}:{case.line}:" in message
    if case.rule:
        assert f"(in rule {case.rule})" in message


@pytest.mark.parametrize("case", BROKEN[:5], ids=lambda c: c.name)
def test_broken_bundle_is_refused_by_the_test_runner_too(tmp_path: Path, case: BrokenBundle) -> None:
    bundle = write(tmp_path, {**case.files, "guard_test.rego": "package guard\n\ntest_ok if true\n"})
    with pytest.raises(PolicyCheckError, match=rf"{case.file}:{case.line}:"):
        run_tests_embedded(bundle)


def test_broken_bundle_is_refused_on_reload(tmp_path: Path) -> None:
    good = write(tmp_path / "good", {"p.rego": 'package t\n\ndecision := {"allow": false}\n'})
    engine = EmbeddedEngine(good, decision="t/decision")
    case = BROKEN[0]
    with pytest.raises(PolicyCheckError):
        engine.reload(write(tmp_path / "bad", case.files))
    assert engine.revision == good.revision


def unchecked(case: BrokenBundle, data: dict[str, object], document: dict[str, object], rule: str) -> object:
    """What regorus alone makes of ``rule`` for one input: the gap the check closes."""
    engine = regorus.Engine()
    engine.set_rego_v0(False)
    for rel, text in case.files.items():
        engine.add_policy(rel, text)
    engine.add_data_json(json.dumps(data))
    engine.set_input_json(json.dumps(document))
    return json.loads(engine.eval_rule_as_json(rule))


def corpus_case(name: str) -> BrokenBundle:
    return next(c for c in BROKEN if c.name == name)


def test_fail_open_cases_really_fail_open_without_the_check() -> None:
    shadow = corpus_case("function-shadows-walk-variable")
    assert unchecked(shadow, {}, {"arguments": {"path": "/etc/shadow"}}, "data.guard.deny") == []
    negation = corpus_case("wildcard-in-negation")
    assert unchecked(negation, {"allowed_tools": []}, {"tool": "rm"}, "data.guard.deny") == []
    typo = corpus_case("missing-key-of-a-literal-object")
    assert unchecked(typo, {}, {"context": {"session_calls": 10_000}}, "data.guard.deny") == []
    assert {shadow.effect, negation.effect, typo.effect} == {"fail-open"}


def test_recursive_function_crashes_regorus_without_the_check() -> None:
    """Why recursion is checked statically: regorus has no recursion guard for functions."""
    case = corpus_case("recursive-function")
    program = (
        "import json, sys, regorus\n"
        "e = regorus.Engine()\n"
        "e.set_rego_v0(False)\n"
        "for rel, text in json.loads(sys.argv[1]).items():\n"
        "    e.add_policy(rel, text)\n"
        "e.set_input_json('{\"arguments\": {}}')\n"
        "e.eval_rule('data.guard.deny')\n"
    )
    out = subprocess.run([sys.executable, "-c", program, json.dumps(case.files)], capture_output=True, timeout=60)
    assert out.returncode == -signal.SIGSEGV and case.effect == "crash"


# ------------------------------------------------------------------------------ the valid corpus


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_valid_bundle_is_accepted_without_findings(tmp_path: Path, case: ValidBundle) -> None:
    bundle = write(tmp_path, case.files)
    EmbeddedEngine(bundle, decision="guard/decision")
    assert findings(bundle, include_tests=True) == []
    if bundle.tests:
        report = run_tests_embedded(bundle)
        assert report.ok and report.passed > 0, [o.to_dict() for o in report.outcomes]


def test_default_bundle_is_clean_and_every_local_is_declared() -> None:
    bundle = load_bundle(BUNDLE)
    assert findings(bundle) == []
    assert findings(bundle, include_tests=True) == []
    # strict_locals: no variable is bound without `some`/`:=`, so no rule added later can capture one
    assert findings(bundle, include_tests=True, strict_locals=True) == []


def test_strict_locals_reports_an_undeclared_output_variable(tmp_path: Path) -> None:
    bundle = write(tmp_path, {"p.rego": "package t\n\nx contains leaf if walk(input, [_, leaf])\n"})
    assert findings(bundle) == []
    [finding] = findings(bundle, strict_locals=True)
    assert "p.rego:3:" in finding and "declare it with `some leaf`" in finding


# --------------------------------------------------------------------- the issue, on the default bundle

SHADOW_INPUT = {
    "action": "tools/call",
    "principal": {"id": "local-agent", "roles": ["developer"], "attributes": {}},
    "server": "files",
    "tool": "read_text_file",
    "arguments": {"path": "/etc/shadow"},
    "tool_info": {"annotations": {"readOnlyHint": True}},
    "context": {},
}


def default_bundle_with(tmp_path: Path, helper: str) -> Bundle:
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root)
    (root / "mcp_guard" / "helpers.rego").write_text(f"package mcp_guard\n\n# a harmless-looking helper\n{helper}\n")
    return load_bundle(root)


@pytest.mark.anyio
async def test_the_issues_helper_no_longer_switches_off_the_argument_rules(tmp_path: Path) -> None:
    bundle = default_bundle_with(tmp_path, "at(inp, t) := object.get(inp, t, null)")
    engine = EmbeddedEngine(bundle)
    d = await engine.evaluate_document(SHADOW_INPUT)
    assert d.allow is False and "'/etc/shadow' is outside the allowed roots" in d.reasons[0]


@pytest.mark.parametrize("helper", ["leaf(x) := x", "path := [1]", "path(a, b) := a"])
def test_a_helper_named_like_a_declared_local_is_refused(tmp_path: Path, helper: str) -> None:
    bundle = default_bundle_with(tmp_path, helper)
    with pytest.raises(PolicyCheckError) as info:
        EmbeddedEngine(bundle)
    [error] = info.value.errors
    assert error.code == LintCode.DIVERGENT_NAME
    assert error.file.endswith("mcp_guard/arguments.rego") and error.rule == "data.mcp_guard.named_strings"
    assert "helpers.rego:4" in error.message


# ----------------------------------------------------------------------------------- details


def test_warnings_do_not_refuse_the_bundle(tmp_path: Path) -> None:
    bundle = write(tmp_path, {"p.rego": 'package t\n\nat := ["a"]\n\nx contains leaf if walk(input, [at, leaf])\n'})
    EmbeddedEngine(bundle, decision="t/x")
    engine = compile_bundle(bundle, check=False)
    [warning] = lint_ast(engine.get_ast_as_json())
    assert warning.severity == "warning" and warning.code == LintCode.RULE_AS_VARIABLE
    assert "`at` here is the rule data.t.at" in warning.message


def test_error_message_is_one_line_and_counts_the_rest(tmp_path: Path) -> None:
    rego = "package t\n\n" + "".join(f"r{i} := v{i}\n\n" for i in range(5))
    with pytest.raises(PolicyCheckError) as info:
        EmbeddedEngine(write(tmp_path, {"p.rego": rego}), decision="t/r0")
    message = str(info.value)
    assert len(info.value.errors) == 5 and "\n" not in message
    assert message.count("is unsafe") == 3 and "(and 2 more; `mcp-guard policy check` lists them)" in message
    assert isinstance(info.value, PolicyError)


def test_with_a_bare_rule_name_is_refused(tmp_path: Path) -> None:
    """OPA mocks ``with big as true``; regorus fails every such test with "undefined rule"."""
    bundle = write(tmp_path, {"p.rego": "package t\n\nbig if input.a\n\nx if big with big as true\n"})
    [finding] = findings(bundle)
    assert "p.rego:5:" in finding and "write with data.t.big as" in finding
    ok = write(tmp_path / "ok", {"p.rego": "package t\n\nbig if input.a\n\nx if big with data.t.big as true\n"})
    assert findings(ok) == []


def test_opa_only_builtins_pass_when_not_embedded(tmp_path: Path) -> None:
    bundle = write(tmp_path, {"p.rego": 'package t\n\nx := crypto.sha256("a")\n'})
    engine = compile_bundle(bundle, check=False)
    assert lint_ast(engine.get_ast_as_json(), embedded=False) == []
    [finding] = lint_ast(engine.get_ast_as_json())
    assert finding.code == LintCode.EMBEDDED_BUILTIN


ELSE_VALUE = """package t

k(v) if v == 3

h(v) if {
	v == 1
} else := k(v)

a := h(4)
"""


def test_function_else_with_a_computed_value_is_refused_for_the_embedded_engine(tmp_path: Path) -> None:
    """`opa fmt` turns `h(v) := true if … else := k(v)` into this; regorus then says h(4) is true, OPA undefined."""
    bundle = write(tmp_path, {"p.rego": ELSE_VALUE})
    engine = compile_bundle(bundle, check=False)
    assert engine.eval_rule_as_json("data.t.a") == "true"  # the divergence the check exists for
    [finding] = lint_ast(engine.get_ast_as_json())
    assert finding.code == LintCode.ELSE_VALUE and (finding.line, finding.rule) == (7, "data.t.h")
    assert lint_ast(engine.get_ast_as_json(), embedded=False) == []  # OPA evaluates it correctly
    safe = ELSE_VALUE.replace("} else := k(v)", "} else if {\n\tk(v)\n}").replace("a := h(4)", "a := h(3)")
    ok = compile_bundle(write(tmp_path / "ok", {"p.rego": safe}))
    assert ok.eval_rule_as_json("data.t.a") == "true"
    constant = ELSE_VALUE.replace("} else := k(v)", "} else := false")
    assert lint_ast(compile_bundle(write(tmp_path / "c", {"p.rego": constant}), check=False).get_ast_as_json()) == []


def test_embedded_missing_builtins_match_the_installed_regorus() -> None:
    table = builtin_table()
    raw = json.loads((REPO / "src" / "mcp_guard" / "policy" / "builtins.json").read_text())
    assert probe_embedded_missing(raw["builtins"]) == sorted(table.embedded_missing)
    assert regorus.__name__ == "regorus" and table.opa_version == "1.4.2"
    assert len(table.builtins) > 150 and "walk" in table.builtins and "print" in table.builtins


def test_the_rule_graph_reaches_what_the_decision_references_and_nothing_else(tmp_path: Path) -> None:
    """RuleGraph: the check's own resolution — a helper rule, a function, a dynamic data ref over a package —
    and an unused rule that nothing reaches."""
    bundle = write(
        tmp_path,
        {
            "a.rego": "package a\n\nimport rego.v1\nimport input.x as ix\n\n"
            'decision := {"allow": allowed}\n\n'
            "allowed if helper(ix)\n\nallowed if data.b[input.k]\n\n"
            "helper(v) := v > limit\n\nlimit := 3\n\nunused := input.secret\n",
            "b.rego": "package b\n\nimport rego.v1\n\nflag if input.y\n",
        },
    )
    graph = RuleGraph(json.loads(compile_bundle(bundle, check=False).get_ast_as_json()))
    assert graph.reachable(("a", "decision")) == {
        ("a", "decision"),
        ("a", "allowed"),
        ("a", "helper"),
        ("a", "limit"),
        ("b", "flag"),
    }
    assert {r.path for r in graph.rules} >= {("a", "unused"), ("b", "flag")}
    assert ("a.rego", ("input", "x")) in {(Path(f).name, p) for f, p in graph.imports}
    assert all(":" in r.where and "(rule data." in r.where for r in graph.rules)
