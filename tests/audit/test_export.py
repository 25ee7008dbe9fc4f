"""`audit export --format opa`: decisions in OPA's decision-log shape, masked before they leave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from audit_testkit import event

from mcp_guard import __version__
from mcp_guard.audit import open_sqlite_sink
from mcp_guard.audit.export import Mask, opa_event
from mcp_guard.cli import main
from mcp_guard.types import AuditEvent

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    async with open_sqlite_sink(path) as store:
        await store.record(AuditEvent(kind="session.start", session_id="s1", principal="alice"))
        await store.record(event(1, details={"action": "tools/call", "obligations": {"secrets": ["tickets_token"]}}))
        await store.record(event(2, principal="bob", decision="deny", reasons=("destructive",)))
        await store.record(AuditEvent(kind="call.result", principal="alice", server="tickets", tool="create_ticket"))
    return path


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_decisions_in_opa_shape(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "export", "--db", str(db), "--format", "opa"]) == 0
    out = capsys.readouterr()
    first, second = lines(out.out)  # only the two decisions
    assert "exported 2 events" in out.err
    assert first["decision_id"] == "dec-1" and first["path"] == "mcp_guard/decision"
    assert first["input"] == {
        "action": "tools/call",
        "principal": {"id": "alice"},
        "session": {"id": "sess-1"},
        "server": "tickets",
        "tool": "create_ticket",
        "arguments": {"title": "ticket 1", "priority": 1},
    }
    assert first["result"] == {
        "allow": True,
        "reasons": ["support may create tickets"],
        "obligations": {"secrets": ["tickets_token"]},
    }
    assert first["bundles"] == {"mcp-guard": {"revision": "rev-1"}}
    assert first["timestamp"].endswith("Z") and first["labels"] == {"app": "mcp-guard", "version": __version__}
    assert first["metrics"] == {"timer_mcp_guard_decision_ns": 1_500_000}
    assert first["mcp_guard"]["input"] == "reconstructed" and first["mcp_guard"]["seq"] == 2
    assert second["result"] == {"allow": False, "reasons": ["destructive"]} and "erased" not in second


async def test_mask_removes_before_export(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "export", "--db", str(db), "--format", "opa", "--mask", "/input/arguments/title"]
    assert main([*argv, "--mask", "/result/obligations", "--mask", "/input/nothing/here"]) == 0
    first, second = lines(capsys.readouterr().out)
    assert "ticket 1" not in json.dumps(first) and first["input"]["arguments"] == {"priority": 1}
    assert first["erased"] == ["/input/arguments/title", "/result/obligations"] and "obligations" not in first["result"]
    assert second["erased"] == ["/input/arguments/title"]  # a pointer to nothing is skipped


async def test_config_masks_and_decision_path(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[policy]\ndecision = "acme/authz/decision"\n[audit]\npath = "{db}"\n'
        'export_mask = ["/input/principal", {op = "upsert", path = "/input/arguments/title", value = "**"}]\n'
    )
    assert main(["audit", "export", "-c", str(cfg), "--format", "opa"]) == 0
    first = lines(capsys.readouterr().out)[0]
    assert first["path"] == "acme/authz/decision" and "principal" not in first["input"]
    assert first["input"]["arguments"]["title"] == "**"
    assert first["erased"] == ["/input/principal"] and first["masked"] == ["/input/arguments/title"]


async def test_a_mask_outside_input_and_result_is_refused(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "export", "--db", str(db), "--format", "opa", "--mask", "/decision_id"]) == 2
    assert "--mask: '/decision_id' is not a JSON pointer under /input or /result" in capsys.readouterr().err
    assert main(["audit", "export", "--db", str(db), "--mask", "/input/x"]) == 2
    assert "--mask applies to --format opa" in capsys.readouterr().err
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[audit]\npath = "{db}"\nexport_mask = ["input/x"]\n')
    assert main(["audit", "export", "-c", str(cfg), "--format", "opa"]) == 2
    assert "export_mask" in capsys.readouterr().err


def test_the_recorded_policy_input_and_answer_are_used_and_pointer_escapes_apply() -> None:
    """A row with the policy record (details.policy, written for replay): the input it saw with the audited
    arguments put back, and the policy's own answer — here an allow a later stage refused."""
    row = {
        "kind": "call.decision",
        "decision_id": "d",
        "decision": "deny",
        "reasons": ["rate_limited"],
        "ts": "2026-01-01T00:00:00Z",
        "arguments": {"a/b": "secret", "list": ["x", "y"]},
        "details": {
            "action": "tools/call",
            "policy": {
                "allow": True,
                "reasons": ["ok"],
                "obligations": {"labels": ["private"]},
                "input": {"action": "tools/call", "principal": {"id": "alice", "roles": ["support"]}},
            },
        },
    }
    e = opa_event(row, masks=[Mask("remove", "/input/arguments/a~1b"), Mask("upsert", "/input/arguments/list/1", "*")])
    assert e["mcp_guard"]["input"] == "recorded" and e["mcp_guard"]["decision"] == "deny"
    assert e["input"] == {
        "action": "tools/call",
        "principal": {"id": "alice", "roles": ["support"]},
        "arguments": {"list": ["x", "*"]},
    }
    assert e["result"] == {"allow": True, "reasons": ["ok"], "obligations": {"labels": ["private"]}}
    assert row["arguments"]["a/b"] == "secret" and row["arguments"]["list"] == ["x", "y"]  # the row is untouched
    assert "metrics" not in e
    unreplayable = {
        **row,
        "details": {"action": "tools/call", "policy": {"unreplayable": {"reason": "input_too_large"}}},
    }
    assert opa_event(unreplayable)["mcp_guard"]["input"] == "reconstructed"
