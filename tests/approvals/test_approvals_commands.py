"""``mcp-guard approvals``: exit codes and messages of the CLI (the e2e test drives it against a running proxy)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from mcp_guard.approvals import ApprovalRequest, SQLiteApprovals
from mcp_guard.cli import main


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "mcp-guard.toml"
    cfg.write_text(
        '[audit]\npath = "audit.db"\nstate_path = "state.db"\n\n'
        '[principals.bob]\nroles = ["secops"]\n\n[principals.eve]\nroles = ["dev"]\n'
    )
    return cfg


def _park(tmp_path: Path) -> str:
    async def park() -> str:
        store = SQLiteApprovals(tmp_path / "state.db")
        await store.start()
        req = ApprovalRequest(
            "agent", "tools/call", "tickets", "delete", "b1", {"id": 7}, "r1", "why", ("role:secops",), 60
        )
        approval, _ = await store.request(req)
        return approval.id

    return anyio.run(park)


def test_list_show_and_decide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path)
    assert main(["approvals", "list", "-c", str(cfg)]) == 0
    assert "no open approvals" in capsys.readouterr().out
    approval_id = _park(tmp_path)
    assert main(["approvals", "list", "--json", "-c", str(cfg)]) == 0
    [shown] = json.loads(capsys.readouterr().out)["approvals"]
    assert shown["id"] == approval_id and shown["status"] == "pending" and shown["arguments"] == {"id": 7}

    monkeypatch.delenv("MCP_GUARD_OPERATOR", raising=False)
    assert main(["approvals", "approve", approval_id, "-c", str(cfg)]) == 2
    assert "--as PRINCIPAL or $MCP_GUARD_OPERATOR" in capsys.readouterr().err
    assert main(["approvals", "approve", approval_id, "--as", "eve", "-c", str(cfg)]) == 1
    assert "not among this approval's approvers" in capsys.readouterr().err
    assert main(["approvals", "approve", "nope", "--as", "bob", "-c", str(cfg)]) == 1
    assert "no approval 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("MCP_GUARD_OPERATOR", "bob")
    assert main(["approvals", "deny", approval_id, "--comment", "no", "-c", str(cfg)]) == 0
    assert f"denied {approval_id}" in capsys.readouterr().out
    assert main(["approvals", "show", approval_id, "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "denied" in out and "bob" in out
    assert main(["approvals", "show", "nope", "-c", str(cfg)]) == 1
    assert main(["audit", "verify", "-c", str(cfg)]) == 0
