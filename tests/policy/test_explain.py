"""explain_failure: the first statement of a failing test body that does not hold, with file:line and values."""

from __future__ import annotations

from pathlib import Path

from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.runner import format_report, run_tests_embedded

POLICY = """package t

import rego.v1

allow if input.a == 1

double(x) := x * 2
"""

TESTS = """package t

import rego.v1

test_compare if {
	d := {"allow": true}
	d.allow == false
}

test_not if {
	x := 1
	not allow with input as {"a": x}
}

test_undefined_call if {
	allow with input as {"a": 2}
}

test_assign_undefined if {
	y := input.nope
	y == 1
}

test_multiline if {
	double(2) == 4
	double(
		3,
	) == 7
}

test_later_binding if {
	y == 2
	y = double(1)
	y == 3
}

test_value := 7

test_iteration if {
	some n in [1, 2, 3]
	n > 5
}
"""


def explained(tmp_path: Path) -> dict[str, str | None]:
    (tmp_path / "t.rego").write_text(POLICY)
    (tmp_path / "t_test.rego").write_text(TESTS)
    report = run_tests_embedded(load_bundle(tmp_path))
    assert report.passed == 0
    return {o.rule.name: str(o.explanation) if o.explanation else None for o in report.outcomes}


def test_each_kind_of_statement(tmp_path: Path) -> None:
    why = explained(tmp_path)
    assert why["test_compare"] == "t_test.rego:7:5: false: d.allow == false (left = true, right = false)"
    assert why["test_not"] == 't_test.rego:12:5: held (under `not`): not allow with input as {"a": x}'
    assert why["test_undefined_call"] == 't_test.rego:16:5: undefined: allow with input as {"a": 2}'
    assert why["test_assign_undefined"] == "t_test.rego:20:5: undefined: y := input.nope (input.nope = undefined)"
    assert why["test_multiline"] == "t_test.rego:26:5: false: double( 3, ) == 7 (left = 6, right = 7)"
    assert why["test_iteration"] == "t_test.rego:41:5: false: n > 5 (left = one of [1, 2, 3], right = 5)"


def test_a_prefix_that_cannot_compile_alone_is_skipped_never_blamed(tmp_path: Path) -> None:
    """`y == 2` reads y before `y = …` binds it (OPA re-orders): that prefix alone does not compile, and the
    explanation names the statement that failed, not the one before it."""
    why = explained(tmp_path)
    assert why["test_later_binding"] == "t_test.rego:34:5: false: y == 3 (left = 2, right = 3)"


def test_a_rule_without_a_body_has_no_explanation_but_its_value(tmp_path: Path) -> None:
    (tmp_path / "t.rego").write_text(POLICY)
    (tmp_path / "t_test.rego").write_text(TESTS)
    outcome = next(o for o in run_tests_embedded(load_bundle(tmp_path)).outcomes if o.rule.name == "test_value")
    assert outcome.explanation is None and outcome.detail == "result 7"


def test_print_output_is_kept_and_shown_like_opa_test(tmp_path: Path) -> None:
    (tmp_path / "t.rego").write_text(POLICY)
    (tmp_path / "t_test.rego").write_text(
        'package t\n\nimport rego.v1\n\ntest_p if {\n\tprint("seen", 1)\n\tfalse\n}\n\ntest_q if print("quiet")\n'
    )
    report = run_tests_embedded(load_bundle(tmp_path))
    out = {o.rule.name: o.output for o in report.outcomes}
    assert out == {"test_p": ("t_test.rego:6: seen 1",), "test_q": ("t_test.rego:10: quiet",)}
    quiet, verbose = format_report(report, verbose=False), format_report(report, verbose=True)
    assert "| t_test.rego:6: seen 1" in quiet and "quiet" not in quiet  # a passing test's output only with -v
    assert "| t_test.rego:10: quiet" in verbose


HELPERS = """package t

import rego.v1

decision := {"allow": input.a == 1, "reasons": [sprintf("a is %v", [input.a])]}

denied_with(inp, fragment) if {
	d := decision with input as inp
	d.allow == false
	some r in d.reasons
	contains(r, fragment)
}

allowed(inp) if {
	d := decision with input as inp
	d.allow == true
}

allowed(inp) if inp.bypass
"""

HELPER_TESTS = """package t

import rego.v1

test_denied_reason if {
	inp := {"a": 2}
	denied_with(inp, "is 3")
}

test_denied_but_allowed if {
	denied_with({"a": 1}, "x") with data.unused as 1
}

test_two_definitions if {
	allowed({"a": 5})
}
"""


def helper_explanations(tmp_path: Path) -> dict[str, str | None]:
    (tmp_path / "t.rego").write_text(HELPERS)
    (tmp_path / "t_test.rego").write_text(HELPER_TESTS)
    report = run_tests_embedded(load_bundle(tmp_path))
    return {o.rule.name: str(o.explanation) if o.explanation else None for o in report.outcomes}


def test_the_search_goes_into_a_called_function(tmp_path: Path) -> None:
    """A helper's failing statement is named too, with the arguments bound (also through `with`)."""
    why = helper_explanations(tmp_path)
    assert why["test_denied_reason"] == (
        't_test.rego:7:5: undefined: denied_with(inp, "is 3"); in it, '
        't.rego:11:5: false: contains(r, fragment) (r = "a is 2", fragment = "is 3")'
    )
    assert why["test_denied_but_allowed"] == (
        't_test.rego:11:5: undefined: denied_with({"a": 1}, "x") with data.unused as 1; in it, '
        "t.rego:9:5: false: d.allow == false (left = true, right = false)"
    )


def test_a_function_with_several_definitions_is_not_entered(tmp_path: Path) -> None:
    why = helper_explanations(tmp_path)
    assert why["test_two_definitions"] == 't_test.rego:15:5: undefined: allowed({"a": 5})'
