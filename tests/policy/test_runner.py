"""The bundle test runner behind `mcp-guard policy test` (embedded engine)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mcp_guard.errors import PolicyError
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.runner import format_report, run_tests_embedded

REPO = Path(__file__).resolve().parents[2]

POLICY = "package t\n\nimport rego.v1\n\ndouble(n) := n * 2\n\nboom := to_number(input.s)\n"
TESTS = (
    "package t\n\nimport rego.v1\n\n"
    "test_double if double(2) == 4\n\n"
    "test_double_wrong if double(2) == 5\n\n"
    'test_with_input if boom == 3 with input as {"s": "3"}\n\n'
    'test_error if boom == 3 with input as {"s": "x"}\n\n'
    "test_not_bool := 7\n"
)


def test_default_bundle_tests_all_pass() -> None:
    bundle = load_bundle(REPO / "policies" / "rego")
    report = run_tests_embedded(bundle)
    assert report.ok, [o.to_dict() for o in report.outcomes if o.status != "PASS"]
    assert report.passed == len(bundle.test_rules()) >= 60
    # every test file of the bundle contributed
    assert {o.rule.file for o in report.outcomes} == {f.rel for f in bundle.tests if "test_" in f.text}


def test_pass_fail_error_reported(tmp_path: Path) -> None:
    (tmp_path / "t.rego").write_text(POLICY)
    (tmp_path / "t_test.rego").write_text(TESTS)
    report = run_tests_embedded(load_bundle(tmp_path))
    status = {o.rule.name: (o.status, o.message) for o in report.outcomes}
    assert status["test_double"] == ("PASS", None)
    assert status["test_double_wrong"] == ("FAIL", "undefined")
    assert status["test_with_input"] == ("PASS", None)
    assert status["test_error"][0] == "ERROR" and "could not parse" in (status["test_error"][1] or "")
    assert status["test_not_bool"] == ("FAIL", "result 7")
    assert (report.passed, report.failed, report.ok) == (2, 3, False)


def test_format_like_opa_test(tmp_path: Path) -> None:
    (tmp_path / "t.rego").write_text(POLICY)
    (tmp_path / "t_test.rego").write_text(TESTS)
    text = format_report(run_tests_embedded(load_bundle(tmp_path)))
    lines = text.splitlines()
    assert lines[0] == "t_test.rego:"
    assert re.fullmatch(r"data\.t\.test_double: PASS \(\d+(\.\d+)?(µs|ms|s)\)", lines[1])
    assert any(re.fullmatch(r"data\.t\.test_double_wrong: FAIL \(.+\)", ln) for ln in lines)
    assert lines[-3] == "-" * 80
    assert lines[-2:] == ["PASS: 2/5", "FAIL: 3/5"]


def test_json_report(tmp_path: Path) -> None:
    (tmp_path / "t.rego").write_text(POLICY)
    (tmp_path / "t_test.rego").write_text(TESTS)
    doc = json.loads(json.dumps(run_tests_embedded(load_bundle(tmp_path)).to_dict()))
    assert doc["engine"] == "embedded" and doc["total"] == 5 and doc["failed"] == 3
    assert doc["tests"][0]["name"] == "data.t.test_double" and doc["tests"][0]["status"] == "PASS"


def test_broken_test_file_is_policy_error(tmp_path: Path) -> None:
    (tmp_path / "t.rego").write_text(POLICY)
    (tmp_path / "t_test.rego").write_text("package t\n\ntest_x if {\n")
    with pytest.raises(PolicyError, match=r"t_test\.rego"):
        run_tests_embedded(load_bundle(tmp_path))


def test_no_tests(tmp_path: Path) -> None:
    (tmp_path / "t.rego").write_text(POLICY)
    report = run_tests_embedded(load_bundle(tmp_path))
    assert report.ok and report.outcomes == ()
    assert format_report(report).endswith("no test_* rules found")
