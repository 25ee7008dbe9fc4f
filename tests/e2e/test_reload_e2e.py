"""Reload without restart against a real ``mcp-guard run --transport http`` process, driven by the real
``mcp-guard reload`` command through ``[server] pid_file``: an upstream added, one removed, a principal's
key changed — then a broken config rejected while the old one keeps serving. Each step is checked from
the outside (HTTP status, listings, calls) and in the audit log."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from e2e_support import API_KEY, POLL_S, REPO, http_guard, recorder, toml_value, write_config

from http_harness import http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

NEW_KEY = "e2e-rotated-key-8b2e71"
TIMEOUT_S = 60.0


def _reload(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_guard", "reload", "-c", str(cfg), "--timeout", "45"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=90,
    )


def _status(url: str, key: str) -> int:
    """The HTTP status of an initialize POST with this bearer key (401 for a key the proxy does not know)."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
    ).encode()
    req = urllib.request.Request(
        url,
        data=body,
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def _reload_rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT details FROM audit_events WHERE kind = 'config.reload' ORDER BY seq").fetchall()
    return [json.loads(r[0]) for r in rows]


async def _tool_names(url: str, key: str) -> set[str]:
    async with http_client(url, key) as client:
        return {t.name for t in (await client.list_tools()).tools}


async def _until_tools(url: str, key: str, want: set[str], absent: set[str]) -> set[str]:
    with anyio.fail_after(TIMEOUT_S):
        while True:
            names = await _tool_names(url, key)
            if want <= names and not (absent & names):
                return names
            await anyio.sleep(POLL_S)


def _config(tmp: Path, upstreams: dict[str, dict[str, Any]], key: str = API_KEY) -> Path:
    """write_config's file (allow-all bundle, key for principal 'agent') with a pid file and ``key``."""
    cfg = write_config(tmp, upstreams)
    text = cfg.read_text().replace("[server]\n", f'[server]\npid_file = "{tmp / "guard.pid"}"\n', 1)
    text = text.replace(hashlib.sha256(API_KEY.encode()).hexdigest(), hashlib.sha256(key.encode()).hexdigest())
    cfg.write_text(text)
    return cfg


async def test_reload_applies_upstreams_and_keys_and_rejects_a_broken_config(tmp_path: Path) -> None:
    pid_file = tmp_path / "guard.pid"
    a = recorder(tmp_path / "a.log")
    cfg = _config(tmp_path, {"a": a, "b": recorder()})
    with http_guard(cfg, tmp_path / "guard.log") as url:
        assert pid_file.exists()
        pid = int(pid_file.read_text())
        names = await _until_tools(url, API_KEY, {"a__echo", "b__echo"}, set())
        assert "c__echo" not in names

        # c added, b removed while a call on the unchanged a is in flight: it completes.
        async with http_client(url, API_KEY) as client, anyio.create_task_group() as tg:
            slow: list[Any] = []

            async def call_slow() -> None:
                slow.append(await client.call_tool("a__slow", {"seconds": 2.0, "steps": 1}))

            tg.start_soon(call_slow)
            with anyio.fail_after(TIMEOUT_S):
                while '"slow"' not in _text(tmp_path / "a.log"):  # noqa: ASYNC110 - another process writes it
                    await anyio.sleep(POLL_S)
            _config(tmp_path, {"a": a, "c": recorder()})
            done = await anyio.to_thread.run_sync(_reload, cfg)
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"pid {pid}" in done.stdout and "upstreams added: c" in done.stdout
            assert "upstreams removed: b" in done.stdout and "principals changed" not in done.stdout
        assert not slow[0].is_error and [c.text for c in slow[0].content if hasattr(c, "text")] == ["slept 2.0s"]

        # The agent's key rotated.
        _config(tmp_path, {"a": a, "c": recorder()}, key=NEW_KEY)
        done = _reload(cfg)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "principals changed: agent" in done.stdout and "upstreams" not in done.stdout

        assert _status(url, API_KEY) == 401
        assert _status(url, NEW_KEY) == 200
        await _until_tools(url, NEW_KEY, {"a__echo", "c__echo"}, {"b__echo"})
        async with http_client(url, NEW_KEY) as client:
            result = await client.call_tool("c__echo", {"text": "from c"})
            assert [c.text for c in result.content if hasattr(c, "text")] == ["from c"]

        # A config the reload command cannot validate: refused before the proxy is signalled (exit 2) ...
        good = cfg.read_text()
        cfg.write_text(good + "\n[upstreams.d]\ncommand = 'python'\nnot_a_key = 1\n")
        refused = _reload(cfg)
        assert refused.returncode == 2 and "upstreams.d.not_a_key: unknown key" in refused.stderr
        assert len(_reload_rows(tmp_path / "audit.db")) == 2
        # ... and rejected whole by the proxy when SIGHUP comes some other way.
        os.kill(pid, signal.SIGHUP)
        with anyio.fail_after(TIMEOUT_S):
            while len(_reload_rows(tmp_path / "audit.db")) < 3:  # noqa: ASYNC110 - written by another process
                await anyio.sleep(POLL_S)

        # A valid file whose new upstream's secret the proxy cannot resolve: signalled, rejected, reported.
        cfg.write_text(
            good
            + '\n[secrets.tok]\nprovider = "env"\nname = "MG_E2E_RELOAD_UNSET"\n'
            + "\n[upstreams.d]\n"
            + "\n".join(f"{k} = {toml_value(v)}" for k, v in (recorder() | {"inject_env": {"TOK": "tok"}}).items())
            + "\n"
        )
        rejected = _reload(cfg)
        assert rejected.returncode == 1, rejected.stdout + rejected.stderr
        assert "reload rejected" in rejected.stdout and "secrets.tok" in rejected.stdout
        assert _status(url, NEW_KEY) == 200 and _status(url, API_KEY) == 401
        names = await _tool_names(url, NEW_KEY)
        assert {"a__echo", "c__echo"} <= names and "d__echo" not in names

        rows = _reload_rows(tmp_path / "audit.db")
        assert [r["status"] for r in rows] == ["ok", "ok", "rejected", "rejected"]
        assert "upstreams.d.not_a_key: unknown key" in rows[2]["error"] and "secrets.tok" in rows[3]["error"]
        assert rows[0]["upstreams_added"] == ["c"] and rows[0]["upstreams_removed"] == ["b"]
        assert rows[1]["principals_changed"] == ["agent"] and rows[1]["upstreams_changed"] == []
        assert rows[0]["pid"] == rows[1]["pid"] == pid
        assert NEW_KEY not in json.dumps(rows)

    assert not pid_file.exists()  # removed by the proxy as it exited (http_guard waited for the exit)
    assert "Traceback" not in (tmp_path / "guard.log").read_text()


def test_reload_without_a_running_proxy_says_so(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {})
    done = _reload(cfg)
    assert done.returncode == 1 and "guard.pid does not exist: is mcp-guard running" in done.stderr
    assert not (tmp_path / "guard.pid").exists()


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
