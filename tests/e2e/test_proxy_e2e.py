"""End to end: real `mcp-guard run` processes in front of real MCP servers, driven by real clients.

Upstreams: npm @modelcontextprotocol/server-everything, PyPI mcp-server-time, and the recorder fixture.
Clients: the `mcp` Python SDK (stdio and streamable HTTP, both protocol eras) and the MCP Inspector CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from e2e_support import (
    API_KEY,
    INSPECTOR_CLI,
    POLL_S,
    REPO,
    everything,
    guard_argv,
    http_guard,
    need_node_peers,
    recorder,
    time_server,
    write_config,
)
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def _sampling(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(text="sampled-by-e2e-client"), model="e2e-model"
    )


async def _elicit(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"color": "green"})


def _stdio_client(cfg: Path, **kw: Any) -> Client:
    argv = guard_argv(cfg)
    params = StdioServerParameters(
        command=argv[0],
        args=argv[1:],
        cwd=str(REPO),
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")},
    )
    kw.setdefault("read_timeout_seconds", 60.0)
    return Client(params, mode=kw.pop("mode", "legacy"), **kw)


def _http_client(url: str, *, mode: str = "legacy", **kw: Any) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=httpx2.Timeout(60.0))
    kw.setdefault("read_timeout_seconds", 60.0)
    return Client(streamable_http_client(url, http_client=http), mode=mode, **kw)  # type: ignore[arg-type]


async def _wait_tools(client: Client, prefix: str, within: float = 60.0) -> list[types.Tool]:
    """The tool list once tools with ``prefix`` appear (upstreams start in the background)."""
    with anyio.fail_after(within):
        while True:
            tools = (await client.list_tools()).tools
            if any(t.name.startswith(prefix) for t in tools):
                return tools
            await anyio.sleep(POLL_S)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    need_node_peers()
    return write_config(
        tmp_path, {"everything": everything(), "time": time_server(), "rec": recorder(tmp_path / "rec.log")}
    )


async def test_stdio_front_real_upstreams(cfg: Path, tmp_path: Path) -> None:
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async with _stdio_client(cfg, sampling_callback=_sampling, elicitation_callback=_elicit) as client:
        await _wait_tools(client, "everything__")
        tools = await _wait_tools(client, "time__")
        names = {t.name for t in tools}
        assert {"everything__echo", "time__get_current_time", "rec__echo"} <= names
        assert all("__" in n for n in names)

        r = await client.call_tool("everything__echo", {"message": "through the guard"})
        assert "through the guard" in _text(r)
        r = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not r.is_error and "UTC" in _text(r)

        r = await client.call_tool(
            "everything__trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress
        )
        assert not r.is_error and len(progress) >= 3

        r = await client.call_tool("everything__trigger-sampling-request", {"prompt": "hello?"})
        assert "sampled-by-e2e-client" in _text(r), _text(r)
        r = await client.call_tool("everything__trigger-elicitation-request", {})
        assert "green" in _text(r), _text(r)

        # Cancellation: the client gives up, the upstream hears about it.
        with anyio.move_on_after(1.0):
            await client.call_tool("rec__hang", {})
        log = tmp_path / "rec.log"
        with anyio.fail_after(15):
            while "cancelled" not in (log.read_text() if log.exists() else ""):  # noqa: ASYNC110 - another process
                await anyio.sleep(POLL_S)

    # The audit trail has the calls, each with a decision before its result.
    db = sqlite3.connect(tmp_path / "audit.db")
    rows = db.execute("SELECT kind, tool, decision_id FROM audit_events ORDER BY seq").fetchall()
    kinds = [r[0] for r in rows]
    assert "session.start" in kinds and "session.end" in kinds
    echo = [r for r in rows if r[1] == "echo" and r[0].startswith("call.")]
    assert [r[0] for r in echo][:2] == ["call.decision", "call.result"] and echo[0][2] == echo[1][2]


async def test_upstream_killed_hangs_and_missing_command(tmp_path: Path) -> None:
    need_node_peers()
    cfg = write_config(
        tmp_path,
        {
            "a": recorder(tmp_path / "a.log"),
            "b": recorder() | {"timeout_s": 1.5},
            "ghost": {"command": "/definitely/not/an/mcp-server", "restart_backoff_s": 30},
        },
    )
    async with _stdio_client(cfg) as client:
        await _wait_tools(client, "b__")
        names = {t.name for t in await _wait_tools(client, "a__")}
        assert not any(n.startswith("ghost__") for n in names)

        info = await client.read_resource("mcpg://a/rec://info")
        pid = json.loads(info.contents[0].text)["pid"]  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        # Others keep working while 'a' is down, and 'a' comes back with a new process.
        assert _text(await client.call_tool("b__echo", {"text": "b fine"})) == "b fine"
        with anyio.fail_after(30):
            while True:
                r = await client.call_tool("a__echo", {"text": "a back"})
                if not r.is_error:
                    break
                assert "mcp-guard" in _text(r)  # a clear error while it restarts
                await anyio.sleep(POLL_S)
        assert _text(r) == "a back"
        info = await client.read_resource("mcpg://a/rec://info")
        assert json.loads(info.contents[0].text)["pid"] != pid  # type: ignore[union-attr]

        # A hanging upstream: the call times out cleanly, the proxy goes on.
        r = await client.call_tool("b__hang", {})
        assert r.is_error and "did not answer" in _text(r)
        assert _text(await client.call_tool("b__echo", {"text": "after hang"})) == "after hang"

        # The missing command is a clear error for the one upstream, not a dead proxy.
        r = await client.call_tool("ghost__anything", {})
        assert r.is_error and "does not exist" in _text(r)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_http_front_both_eras(cfg: Path, tmp_path: Path, mode: str) -> None:
    with http_guard(cfg, tmp_path / "guard.log") as url:
        async with _http_client(url, mode=mode) as client:
            await _wait_tools(client, "time__")
            await _wait_tools(client, "everything__")
            r = await client.call_tool("everything__get-sum", {"a": 19, "b": 23})
            assert "42" in _text(r)
            r = await client.call_tool(
                "time__convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}
            )
            assert not r.is_error, _text(r)
            resources = (await client.list_resources()).resources
            assert resources and all(str(x.uri).startswith("mcpg://") for x in resources)
            first = next(x for x in resources if str(x.uri).startswith("mcpg://everything/"))
            assert (await client.read_resource(str(first.uri))).contents
            prompts = (await client.list_prompts()).prompts
            simple = next(p for p in prompts if p.name == "everything__simple-prompt")
            assert (await client.get_prompt(simple.name)).messages
        async with httpx2.AsyncClient(timeout=10) as http:
            r = await http.post(
                url,
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"Accept": "application/json, text/event-stream"},
            )
            assert r.status_code == 401


def _inspector(*args: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is required for the Inspector CLI"
    out = subprocess.run(
        [node, str(INSPECTOR_CLI), "--cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    return dict(json.loads(out.stdout))


def test_inspector_cli_stdio_and_http(cfg: Path, tmp_path: Path) -> None:
    # The Inspector has a --config of its own: hand ours over in the environment instead.
    argv = ["-e", f"MCP_GUARD_CONFIG={cfg}", *guard_argv(cfg)[:4]]
    listed = _inspector(*argv, "--method", "tools/list")
    assert any(t["name"] == "rec__echo" for t in listed["tools"])
    called = _inspector(*argv, "--method", "tools/call", "--tool-name", "rec__echo", "--tool-arg", "text=inspected")
    assert called["content"][0]["text"] == "inspected"
    with http_guard(cfg, tmp_path / "guard.log") as url:
        called = _inspector(
            url,
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {API_KEY}",
            "--method",
            "tools/call",
            "--tool-name",
            "time__get_current_time",
            "--tool-arg",
            "timezone=UTC",
        )
        assert not called.get("isError") and "UTC" in called["content"][0]["text"]
