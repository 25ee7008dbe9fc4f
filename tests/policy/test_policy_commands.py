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
    }
    assert len(result["revision"]) == 64 and result["code"] is None


def test_eval_deny_exit_1(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "in.json"
    f.write_text(json.dumps(doc("alice", "tickets", "delete_ticket", {"destructiveHint": True}, id=1)))
    rc, out, _ = run(capsys, "policy", "eval", "-c", str(config), "-i", str(f))
    assert rc == 1 and json.loads(out)["allow"] is False


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
    rc, out, _ = run(capsys, "policy", "test", "-c", str(config))
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
