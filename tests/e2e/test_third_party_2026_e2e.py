"""A real 2026-era third-party upstream: PyPI ``mcp-server-time`` 2026.10.19 behind a real ``mcp-guard run``.

The server is the official reference time server, built on the mcp 2.3 SDK, which answers ``server/discover``; with
``protocol = "auto"`` mcp-guard must find that out and speak 2026-07-28 (stateless) to it — shown by the
``upstream.start`` audit row, ``details.upstream_protocol`` on every call row, and ``mcp-guard check --json``.
Clients of both eras reach it through both fronts (stdio and HTTP): a 2025-11-25 SDK client (a session) and a
2026-07-28 stateless SDK client (none). The policy is the shipped bundle, tightened by site data (``[policy]
data_overlay``): the grant every principal has on ``time`` is withdrawn and a ``timekeeper`` role may read the
current time only, so alice (a timekeeper) is served and bob (no role) is denied, as is alice's ``convert_time``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from e2e_support import POLL_S, REPO, guard_argv, http_guard, time_server
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

STATELESS = "2026-07-28"
KEYS = {"alice": "time26-e2e-alice-key-7d2b", "bob": "time26-e2e-bob-key-3e9a"}
# Site data over the shipped bundle: no one inherits time from the "*" role any more; timekeepers may read the clock.
SITE = {
    "mcp_guard_config": {
        "roles": {
            "*": {"grants": []},
            "timekeeper": {"grants": [{"server": "time", "tools": ["get_current_time"], "read_only": True}]},
        }
    }
}


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    (tmp_path / "site.json").write_text(json.dumps(SITE))
    upstream = time_server()
    lines = [
        '[server]\nprincipal = "alice"\n',
        f'[policy]\nbundle = {json.dumps(str(REPO / "policies" / "rego"))}\ndata_overlay = ["site.json"]\n',
        f"[audit]\npath = {json.dumps(str(tmp_path / 'audit.db'))}\n",
        '[principals.alice]\nroles = ["timekeeper"]\n'
        f'api_key_sha256 = "{hashlib.sha256(KEYS["alice"].encode()).hexdigest()}"\n',
        f'[principals.bob]\napi_key_sha256 = "{hashlib.sha256(KEYS["bob"].encode()).hexdigest()}"\n',
        f"[upstreams.time]\ncommand = {json.dumps(upstream['command'])}\nargs = {json.dumps(upstream['args'])}\n"
        'protocol = "auto"\ntimeout_s = 30\n',
    ]
    path = tmp_path / "mcp-guard.toml"
    path.write_text("\n".join(lines))
    return path


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _http_client(url: str, who: str, mode: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEYS[who]}"}, timeout=httpx2.Timeout(60.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=60.0)  # type: ignore[arg-type]


async def _time_tools(client: Client) -> set[str]:
    """The ``time__`` tools the client is shown, once the upstream is up (it starts in the background)."""
    with anyio.fail_after(60):
        while True:
            names = {t.name for t in (await client.list_tools()).tools if t.name.startswith("time__")}
            if names:
                return names
            await anyio.sleep(POLL_S)


async def _served_and_limited(client: Client) -> None:
    """As alice: the clock is listed and answers; the tool the site data does not grant is neither."""
    assert await _time_tools(client) == {"time__get_current_time"}
    r = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
    assert not r.is_error, _text(r)
    assert json.loads(_text(r))["timezone"] == "UTC"
    denied = await client.call_tool(
        "time__convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}
    )
    assert denied.is_error


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _assert_spoken_2026(db: Path) -> None:
    """The audit says mcp-guard spoke 2026-07-28 to the server, at start and on every call that reached a decision."""
    [(details,)] = _rows(db, "SELECT details FROM audit_events WHERE kind = 'upstream.start' AND server = 'time'")
    start = json.loads(details)
    assert (start["protocol_version"], start["upstream_protocol"]) == (STATELESS, "stateless")
    assert start["server_info"]["name"] == "mcp-time"
    calls = _rows(db, "SELECT kind, details FROM audit_events WHERE kind LIKE 'call.%' AND server = 'time'")
    assert {kind for kind, _ in calls} >= {"call.decision", "call.result"}
    assert {json.loads(d).get("upstream_protocol") for _, d in calls} == {"stateless"}


def _assert_client_era(db: Path, mode: str) -> None:
    """A 2025-11-25 client opened a session (audited); a stateless 2026-07-28 client opened none."""
    sessions = _rows(db, "SELECT count(*) FROM audit_events WHERE kind = 'session.start'")[0][0]
    assert (sessions > 0) == (mode == "legacy"), f"{sessions} sessions for a {mode} client"


@pytest.mark.parametrize("mode", ["legacy", STATELESS])
async def test_stdio_front_speaks_2026_to_the_time_server(cfg: Path, tmp_path: Path, mode: str) -> None:
    argv = guard_argv(cfg)
    params = StdioServerParameters(
        command=argv[0],
        args=argv[1:],
        cwd=str(REPO),
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")},
    )
    async with Client(params, mode=mode, read_timeout_seconds=60.0) as alice:
        await _served_and_limited(alice)
    _assert_spoken_2026(tmp_path / "audit.db")
    _assert_client_era(tmp_path / "audit.db", mode)
    denials = _rows(tmp_path / "audit.db", "SELECT tool FROM audit_events WHERE decision = 'deny'")
    assert denials == [("convert_time",)]


@pytest.mark.parametrize("mode", ["legacy", STATELESS])
async def test_http_front_both_client_eras_and_a_denied_principal(cfg: Path, tmp_path: Path, mode: str) -> None:
    with http_guard(cfg, tmp_path / "guard.log") as url:
        async with _http_client(url, "alice", mode) as alice:
            await _served_and_limited(alice)
        async with _http_client(url, "bob", mode) as bob:
            assert {t.name for t in (await bob.list_tools()).tools if t.name.startswith("time__")} == set()
            r = await bob.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert r.is_error
    db = tmp_path / "audit.db"
    _assert_spoken_2026(db)
    _assert_client_era(db, mode)
    denials = _rows(db, "SELECT principal, tool FROM audit_events WHERE decision = 'deny' ORDER BY seq")
    assert denials == [("alice", "convert_time"), ("bob", "get_current_time")]
    allowed = _rows(db, "SELECT principal FROM audit_events WHERE kind = 'call.result' AND tool = 'get_current_time'")
    assert allowed == [("alice",)]


def test_check_reports_the_2026_era(cfg: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_guard", "check", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    time = json.loads(done.stdout)["upstreams"]["time"]
    assert (time["state"], time["protocol_version"]) == ("ready", STATELESS)
    assert set(time["tools"]) == {"get_current_time", "convert_time"}
