"""`mcp-guard policy eval` and `mcp-guard policy test`: output and exit codes (0 ok, 1 deny/fail, 2 error)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from mcp_guard.cli import main

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "rego"


def doc(principal: str, server: str, tool: str, annotations: dict[str, bool], **arguments: object) -> dict[str, object]:
    return {
        "action": "tools/call",
        "principal": {"id": principal, "roles": [], "attributes": {}},
        "server": server,
        "tool": tool,
        "arguments": arguments,
        "tool_info": {"annotations": annotations},
        "context": {"usage": {}},
    }


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "mcp-guard.toml"
    cfg.write_text(f'[policy]\nengine = "embedded"\nbundle = "{BUNDLE}"\nhot_reload = false\n')
    return cfg


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_eval_allow_exit_0(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "in.json"
    f.write_text(json.dumps(doc("alice", "tickets", "get_ticket", {"readOnlyHint": True}, id=1)))
    rc, out, _ = run(capsys, "policy", "eval", "--config", str(config), "--input", str(f))
    result = json.loads(out)
    assert rc == 0 and result["allow"] is True
    assert result["obligations"] == {
        "secrets": ["tickets_token"],
        "rate_limit": [{"key": "tool_calls|alice|tickets|get_ticket", "limit": 300, "window_s": 60}],
        "labels": ["private"],
    }
    assert len(result["revision"]) == 64 and result["code"] is None


def test_eval_deny_exit_1(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "in.json"
    f.write_text(json.dumps(doc("alice", "tickets", "delete_ticket", {"destructiveHint": True}, id=1)))
    rc, out, _ = run(capsys, "policy", "eval", "-c", str(config), "-i", str(f))
    assert rc == 1 and json.loads(out)["allow"] is False


def test_eval_fills_in_url_hosts_the_way_the_proxy_does(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An input written by hand has no context.urls: eval adds the WHATWG reading, as the proxy would."""
    f = tmp_path / "in.json"
    for url, allow in (("https://docs.python.org/3/", True), ("https://169.254.169.254\\.example.com/", False)):
        f.write_text(json.dumps(doc("alice", "fetch", "fetch", {"readOnlyHint": True}, url=url)))
        rc, out, _ = run(capsys, "policy", "eval", "-c", str(config), "-i", str(f))
        result = json.loads(out)
        assert result["allow"] is allow and rc == (0 if allow else 1), result
    assert any("host '169.254.169.254'" in r for r in result["reasons"])


def test_eval_reads_stdin(config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "sys.stdin", io.StringIO(json.dumps(doc("bob", "warehouse", "query", {"readOnlyHint": True}, sql="select 1")))
    )
    rc, out, _ = run(capsys, "policy", "eval", "-c", str(config), "--input", "-")
    assert rc == 0 and json.loads(out)["reasons"] == ["role 'analyst' allows warehouse__query"]


def test_eval_fail_closed_deny_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.rego").write_text('package p\n\ndecision := {"allow": "maybe"}\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text('[policy]\nbundle = "."\ndecision = "p/decision"\n')
    f = tmp_path / "in.json"
    f.write_text("{}")
    rc, out, _ = run(capsys, "policy", "eval", "-c", str(cfg), "-i", str(f))
    assert rc == 1 and json.loads(out)["code"] == "result_invalid"


@pytest.mark.parametrize(("content", "message"), [("{oops", "input is not JSON"), ("[1]", "must be a JSON object")])
def test_eval_bad_input_exit_2(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    f = tmp_path / "in.json"
    f.write_text(content)
    rc, out, err = run(capsys, "policy", "eval", "-c", str(config), "-i", str(f))
    assert rc == 2 and out == "" and message in err and str(f) in err


def test_eval_missing_input_file_exit_2(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "policy", "eval", "-c", str(config), "-i", str(tmp_path / "nope.json"))
    assert rc == 2 and "nope.json" in err


def test_eval_broken_bundle_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.rego").write_text("package p\n\nx := {\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[policy]\nbundle = "."\n')
    f = tmp_path / "in.json"
    f.write_text("{}")
    rc, _, err = run(capsys, "policy", "eval", "-c", str(cfg), "-i", str(f))
    assert rc == 2 and "bad.rego:4" in err


def test_test_default_bundle_exit_0(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "policy", "test", "-v", "-c", str(config))
    assert rc == 0
    assert "data.mcp_guard.test_default_deny_without_roles: PASS (" in out
    assert out.rstrip().splitlines()[-1].startswith("PASS: ")


def test_test_dir_with_failure_exit_1(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.rego").write_text("package t\n\nx := 1\n")
    (tmp_path / "t_test.rego").write_text("package t\n\ntest_ok if x == 1\n\ntest_bad if x == 2\n")
    rc, out, _ = run(capsys, "policy", "test", str(tmp_path), "-c", str(config))
    assert rc == 1
    assert "data.t.test_bad: FAIL (" in out and "PASS: 1/2" in out and "FAIL: 1/2" in out


def test_test_json(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.rego").write_text("package t\n\nx := 1\n")
    (tmp_path / "t_test.rego").write_text("package t\n\ntest_ok if x == 1\n")
    rc, out, _ = run(capsys, "policy", "test", str(tmp_path), "--json", "-c", str(config))
    report = json.loads(out)
    assert rc == 0 and report["passed"] == 1 and report["tests"][0]["name"] == "data.t.test_ok"


def test_test_missing_dir_exit_2(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "policy", "test", str(tmp_path / "nope"), "-c", str(config))
    assert rc == 2 and "not found" in err


def test_policy_without_subcommand_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, _ = run(capsys, "policy")
    assert rc == 2


# ----------------------------------------------------------------------------------- policy check

SHADOWING = {
    "p.rego": "package t\n\nx contains leaf if {\n\twalk(input, [at, leaf])\n}\n",
    "helpers.rego": "package t\n\nat(a, b) := a\n",
}


def bundle_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    for rel, text in files.items():
        (root / rel).write_text(text)
    return root


def test_check_clean_bundle_exit_0(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "policy", "check", "-c", str(config))
    assert rc == 0
    files = len(list(BUNDLE.rglob("*.rego")))  # policies and their tests
    assert files >= 11
    assert out.strip() == f"{BUNDLE}: {files} file(s) checked, 0 error(s), 0 warning(s)"


def test_check_lists_findings_with_file_line_and_rule(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = bundle_dir(tmp_path, SHADOWING)
    rc, out, _ = run(capsys, "policy", "check", "-c", str(config), str(root))
    first, summary = out.strip().splitlines()
    assert rc == 1
    assert first.startswith(f"{root / 'p.rego'}:4:18: undefined ref: data.t.at")
    assert first.endswith("(in rule data.t.x) [error: undefined-ref]")
    assert summary == f"{root}: 2 file(s) checked, 1 error(s), 0 warning(s)"
    rc, out, _ = run(capsys, "policy", "check", "-c", str(config), "--json", str(root))
    report = json.loads(out)
    assert rc == 1 and report["ok"] is False
    assert [(f["line"], f["code"], f["rule"]) for f in report["findings"]] == [(4, "undefined-ref", "data.t.x")]


def test_check_engine_and_strict_options(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = bundle_dir(
        tmp_path, {"p.rego": 'package t\n\nh := crypto.sha256("a")\n\nx contains v if walk(input, [_, v])\n'}
    )
    rc, out, _ = run(capsys, "policy", "check", "-c", str(config), str(root))
    assert rc == 1 and "builtin crypto.sha256 is not implemented by the embedded engine" in out
    rc, out, _ = run(capsys, "policy", "check", "-c", str(config), "--engine", "opa", str(root))
    assert rc == 0 and "0 error(s)" in out
    rc, out, _ = run(capsys, "policy", "check", "-c", str(config), "--engine", "opa", "--strict", str(root))
    assert rc == 1 and "declare it with `some v`" in out


def test_check_unparsable_bundle_exit_1(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = bundle_dir(tmp_path, {"p.rego": "package t\n\nx := {\n"})
    rc, out, _ = run(capsys, "policy", "check", "-c", str(config), str(root))
    assert rc == 1 and "p.rego:4" in out and out.strip().endswith("[error: parse]")


def test_check_sees_findings_only_the_tests_bring(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = bundle_dir(tmp_path, {"p.rego": "package t\n\nx := 1\n", "p_test.rego": "package t\n\ntest_x if y == 1\n"})
    rc, out, _ = run(capsys, "policy", "check", "-c", str(config), str(root))
    assert rc == 1 and f"{root / 'p_test.rego'}:3:11: var y is unsafe (in rule data.t.test_x)" in out


def test_test_command_refuses_a_bundle_failing_the_check(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = bundle_dir(tmp_path, {**SHADOWING, "p_test.rego": "package t\n\ntest_x if count(x) == 0\n"})
    rc, out, err = run(capsys, "policy", "test", "-c", str(config), str(root))
    assert rc == 2 and out == ""
    assert f"{root / 'p.rego'}:4:18: undefined ref: data.t.at" in err
    assert "the bundle fails the static check; no test was run" in err


def test_eval_is_not_blocked_by_failing_tests(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Tests gate starting the proxy, not looking at one decision (that is how a failing test is debugged)."""
    root = bundle_dir(
        tmp_path,
        {
            "p.rego": 'package t\n\ndecision := {"allow": true}\n',
            "p_test.rego": "package t\n\ntest_denies if not decision.allow\n",
        },
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[policy]\nbundle = "{root}"\ndecision = "t/decision"\nhot_reload = false\n')
    f = tmp_path / "in.json"
    f.write_text("{}")
    rc, out, _ = run(capsys, "policy", "eval", "-c", str(cfg), "-i", str(f))
    assert rc == 0 and json.loads(out)["allow"] is True
    rc, out, _ = run(capsys, "policy", "test", "-c", str(cfg))
    assert rc == 1 and "data.t.test_denies: FAIL" in out


# ------------------------------------------------------------------ policy test: -r, -v, explain, coverage

EXPLAINED = {
    "p.rego": "package t\n\nallow if input.a == 1\n\nunused if input.z == 9\n",
    "p_test.rego": (
        'package t\n\ntest_ok if allow with input as {"a": 1}\n\n'
        'test_bad if {\n\td := {"allow": true}\n\td.allow == false\n}\n'
    ),
}


def test_test_explains_a_failure_without_verbose(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = bundle_dir(tmp_path, EXPLAINED)
    rc, out, _ = run(capsys, "policy", "test", "-c", str(config), str(root))
    assert rc == 1
    assert "test_ok" not in out  # only failures without -v
    assert "data.t.test_bad: FAIL" in out
    assert "p_test.rego:7:" in out and "false: d.allow == false (left = true, right = false)" in out


def test_test_run_regex_selects_tests(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = bundle_dir(tmp_path, EXPLAINED)
    rc, out, _ = run(capsys, "policy", "test", "-v", "-r", "test_o", "-c", str(config), str(root))
    assert rc == 0 and "data.t.test_ok: PASS" in out and "test_bad" not in out and "PASS: 1/1" in out
    rc, _, err = run(capsys, "policy", "test", "-r", "(", "-c", str(config), str(root))
    assert rc == 2 and "--run" in err


def test_test_coverage_and_threshold(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = bundle_dir(tmp_path, EXPLAINED)
    rc, out, err = run(
        capsys, "policy", "test", "-r", "ok", "--coverage", "--threshold", "60", "-c", str(config), str(root)
    )
    assert "p.rego" in out and "50.00%" in out and "not covered: 5" in out
    assert rc == 1 and "below the threshold 60%" in err
    rc, out, _ = run(
        capsys, "policy", "test", "-r", "ok", "--coverage", "--threshold", "50", "-c", str(config), str(root)
    )
    assert rc == 0
    rc, out, _ = run(capsys, "policy", "test", "-r", "ok", "--coverage", "--json", "-c", str(config), str(root))
    cov = json.loads(out)["coverage"]
    assert cov["coverage"] == 50.0 and cov["files"][0]["not_covered"] == [5]
    rc, _, err = run(capsys, "policy", "test", "--threshold", "50", "-c", str(config), str(root))
    assert rc == 2 and "--threshold needs --coverage" in err


def test_default_bundle_coverage_is_kept_high(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped tests exercise (nearly) every line of the shipped rules; CI can hold a bundle to it."""
    rc, out, _ = run(capsys, "policy", "test", "--coverage", "--threshold", "95", "-c", str(config))
    assert rc == 0 and "total" in out


# ------------------------------------------------------------------ data_overlay and data.schema.json


def test_check_names_the_overlay_and_the_misspelt_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site.json"
    site.write_text(json.dumps({"mcp_guard_config": {"paths": {"allowed_root": {"files": ["/data"]}}}}))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[policy]\nbundle = "{BUNDLE}"\ndata_overlay = ["site.json"]\n')
    rc, out, _ = run(capsys, "policy", "check", "-c", str(cfg))
    assert rc == 1
    assert f"{site}: data.mcp_guard_config.paths.allowed_root: unknown key" in out and "[error: schema]" in out
    site.write_text(json.dumps({"mcp_guard_config": {"paths": {"allowed_roots": {"files": ["/data"]}}}}))
    rc, out, _ = run(capsys, "policy", "check", "-c", str(cfg))
    assert rc == 0, out


def test_eval_uses_the_overlay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "site.json").write_text(
        json.dumps({"mcp_guard_config": {"paths": {"allowed_roots": {"files": ["/data/site"]}}}})
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[policy]\nbundle = "{BUNDLE}"\ndata_overlay = ["site.json"]\nhot_reload = false\n')
    f = tmp_path / "in.json"
    f.write_text(json.dumps(doc("bob", "files", "read_text_file", {"readOnlyHint": True}, path="/data/site/a.txt")))
    rc, out, _ = run(capsys, "policy", "eval", "-c", str(cfg), "-i", str(f))
    assert rc == 0, out
    f.write_text(
        json.dumps(doc("bob", "files", "read_text_file", {"readOnlyHint": True}, path="/srv/agent-workspace/a"))
    )
    rc, out, _ = run(capsys, "policy", "eval", "-c", str(cfg), "-i", str(f))
    assert rc == 1 and "outside the allowed roots (/data/site)" in out


def test_a_bad_overlay_does_not_fail_the_tests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`policy test` tests the rules as shipped: the site's data is `policy check`'s and start-up's concern."""
    (tmp_path / "site.json").write_text(json.dumps({"mcp_guard_config": {"pathz": {}}}))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[policy]\nbundle = "{BUNDLE}"\ndata_overlay = ["site.json"]\n')
    rc, out, _ = run(capsys, "policy", "test", "-c", str(cfg))
    assert rc == 0 and "PASS: " in out
    assert run(capsys, "policy", "check", "-c", str(cfg))[0] == 1
