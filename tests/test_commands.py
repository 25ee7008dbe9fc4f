"""``mcp-guard run`` / ``check`` / ``tools`` as an operator meets them: signals, why an upstream failed,
what a principal sees."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_guard.cli import main

REPO = Path(__file__).resolve().parents[1]
RECORDER = REPO / "tests" / "fixtures" / "recorder.py"
TIMEOUT_S = 30.0
POLL_S = 0.05  # interval of condition polls (always under a deadline)

POLICY = """package mcp_guard

import rego.v1

default decision := {"allow": false, "reasons": ["REASON"]}

decision := {"allow": true, "reasons": ["REASON"]} if input.action == "tools/list"
"""


def _bundle(root: Path, reason: str) -> None:
    root.mkdir(exist_ok=True)
    (root / "policy.rego").write_text(POLICY.replace("REASON", reason))


def _config(directory: Path, name: str = "guard") -> Path:
    cfg = directory / "guard.toml"
    cfg.write_text(
        f'[server]\nname = "{name}"\n[policy]\nbundle = "bundle"\nhot_reload = false\n'
        '[audit]\npath = "audit.db"\nstate_path = "state.db"\n'
        f'[upstreams.rec]\ncommand = "python"\nargs = ["{RECORDER}"]\n'
    )
    return cfg


def _rows(db: Path, kind: str) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM audit_events WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    return [{**dict(r), "details": json.loads(r["details"] or "{}")} for r in rows]


def _log_events(path: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            found.append(entry)
    return found


async def _until(condition: Callable[[], Any]) -> Any:
    with anyio.fail_after(TIMEOUT_S):
        while not (value := condition()):  # noqa: ASYNC110 - the state lives in another process
            await anyio.sleep(POLL_S)
        return value


class _Client:
    """Newline-delimited JSON-RPC over the proxy's stdin/stdout."""

    def __init__(self, proc: Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._out = BufferedByteReceiveStream(proc.stdout)
        self._id = 0

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._id += 1
        message = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": params or {}}
        await self._proc.stdin.send(json.dumps(message).encode() + b"\n")
        with anyio.fail_after(TIMEOUT_S):
            while True:
                answer = json.loads(await self._out.receive_until(b"\n", 1 << 20))
                if answer.get("id") == self._id:
                    return dict(answer)

    async def notify(self, method: str) -> None:
        assert self._proc.stdin is not None
        await self._proc.stdin.send(json.dumps({"jsonrpc": "2.0", "method": method}).encode() + b"\n")


@pytest.mark.anyio
async def test_sighup_reloads_policy_reports_config_changes_and_keeps_serving(tmp_path: Path) -> None:
    _bundle(tmp_path / "bundle", "first")
    cfg = _config(tmp_path)
    stderr = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "MCP_GUARD_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    with stderr.open("wb") as err:
        proc = await anyio.open_process(
            [sys.executable, "-m", "mcp_guard", "run", "-c", str(cfg)], stderr=err, env=env, cwd=tmp_path
        )
    try:
        client = _Client(proc)
        init = await client.request(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
        )
        assert init["result"]["serverInfo"]["name"] == "guard"
        await client.notify("notifications/initialized")
        db = tmp_path / "audit.db"
        first = (await _until(lambda: _rows(db, "policy.load")))[-1]["policy_revision"]

        # A new bundle (hot_reload is off: only the signal can load it) and a config change that needs a restart.
        _bundle(tmp_path / "bundle", "second")
        _config(tmp_path, name="renamed")
        proc.send_signal(signal.SIGHUP)
        logged = (await _until(lambda: _log_events(stderr, "config.reload")))[0]
        assert logged["policy"] == "loaded" and logged["restart_required"] == ["server.name"]
        assert logged["policy_revision"] != first
        row = (await _until(lambda: _rows(db, "config.reload")))[0]
        assert row["details"]["source"] == str(cfg)
        assert row["details"]["restart_required"] == ["server.name"]
        assert row["details"]["status"] == "restart_required" and logged["status"] == "restart_required"
        assert row["details"]["policy_revision"] == logged["policy_revision"]
        loads = await _until(lambda: [r for r in _rows(db, "policy.load") if r["policy_revision"] != first])
        assert loads[0]["policy_revision"] == logged["policy_revision"] and loads[0]["details"]["reload"] is True

        # A broken config on the next SIGHUP is reported and changes nothing.
        cfg.write_text("[server\n")
        proc.send_signal(signal.SIGHUP)
        rejected = (await _until(lambda: _log_events(stderr, "config.reload")[1:]))[0]
        assert rejected["status"] == "rejected" and "invalid TOML" in rejected["error"]
        assert (await _until(lambda: _rows(db, "config.reload")[1:]))[0]["details"]["error"] == rejected["error"]

        # Still serving, on the reloaded policy.
        listed = await client.request("tools/list")
        assert "rec__echo" in {t["name"] for t in listed["result"]["tools"]}
        assert proc.returncode is None

        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(TIMEOUT_S):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "Traceback" not in stderr.read_text()


def test_check_shows_why_an_upstream_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _bundle(tmp_path / "bundle", "ok")
    cfg = tmp_path / "guard.toml"
    cfg.write_text(
        '[policy]\nbundle = "bundle"\n[audit]\npath = "audit.db"\nstate_path = "state.db"\n'
        '[upstreams.broken]\ncommand = "python"\nargs = ["-m", "no_such_connector_xyz"]\nrestart = false\n'
        f'[upstreams.rec]\ncommand = "python"\nargs = ["{RECORDER}"]\n'
        f'[upstreams.modern]\ncommand = "python"\nargs = ["{RECORDER}"]\nenv = {{ RECORDER_MODERN = "1" }}\n'
        # a 2026-07-28 upstream's tools declare no task support: the config does (with a typo in it)
        'task_tools = { slow = "optional", hang = "required", slwo = "optional" }\n'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["check", "-c", str(cfg), "--timeout", "20"]) == 1
    out = capsys.readouterr().out
    assert "[ok  ] rec: protocol 2025-11-25," in out and "[DOWN] broken:" in out
    assert "[ok  ] modern: protocol 2026-07-28," in out  # the era each upstream is spoken to in
    assert "No module named no_such_connector_xyz" in out, out
    assert "as tasks: hang (required), slow (optional)" in out
    assert "warning: task_tools names tools it does not list: slwo" in out

    assert main(["check", "-c", str(cfg), "--timeout", "20", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert any("No module named no_such_connector_xyz" in line for line in report["upstreams"]["broken"]["stderr"])
    assert "stderr" not in report["upstreams"]["rec"]
    assert report["upstreams"]["rec"]["protocol_version"] == "2025-11-25"
    assert report["upstreams"]["modern"]["protocol_version"] == "2026-07-28"
    assert report["upstreams"]["modern"]["tasks"] == {"slow": "optional", "hang": "required"}
    assert report["upstreams"]["modern"]["task_tools_unknown"] == ["slwo"]
    assert report["upstreams"]["rec"]["tasks"] == {}


def test_tools_lists_what_the_principal_may_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mcp-guard tools`` answers what a tools/list would (Guard.visible_tools), per principal."""
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "policy.rego").write_text(
        "package mcp_guard\n\nimport rego.v1\n\n"
        'default decision := {"allow": false, "reasons": ["no"]}\n\n'
        'decision := {"allow": true} if {\n    "echoer" in input.principal.roles\n    input.tool == "echo"\n}\n'
    )
    cfg = tmp_path / "guard.toml"
    cfg.write_text(
        '[policy]\nbundle = "bundle"\n[audit]\npath = "audit.db"\nstate_path = "state.db"\n'
        '[principals.ann]\nroles = ["echoer"]\n'
        f'[upstreams.rec]\ncommand = "python"\nargs = ["{RECORDER}"]\n'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["tools", "-c", str(cfg), "--principal", "ann", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tools"] == ["rec__echo"]
    assert main(["tools", "-c", str(cfg), "--principal", "bob", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tools"] == []


def test_no_subcommand_prints_usage_and_exits_2() -> None:
    """``python -m mcp_guard`` with no subcommand prints usage and exits 2 (not a traceback)."""
    out = subprocess.run([sys.executable, "-m", "mcp_guard"], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 2 and "usage" in out.stderr and "Traceback" not in out.stderr
