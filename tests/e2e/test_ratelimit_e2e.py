"""Rate limits through a real ``mcp-guard run --transport http``: the shipped bundle's per-principal, per-tool
limit holds across sessions of both protocol eras, frees up when its window passes, and fails closed when
the counter store cannot be used. The recorder upstream's log proves which calls reached it; the audit
trail holds every deny and still verifies."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from e2e_support import API_KEY, REPO, guard_argv, http_guard, recorder, write_config
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

LIMIT = 5
WINDOW_S = 4  # short, so the test can wait for it; long enough that a burst of 10 calls fits in one window
KEY = "tool_calls|agent|rec|echo"


def _bundle(tmp: Path) -> Path:
    """The default bundle (rules and limits.rego as shipped) with a role for the recorder and a small limit."""
    bundle = tmp / "bundle"
    shutil.copytree(REPO / "policies" / "rego", bundle)
    data = json.loads((bundle / "data.json").read_text())
    cfg = data["mcp_guard_config"]
    cfg["roles"] = {"echoer": {"grants": [{"server": "rec", "tools": ["echo"]}]}}
    cfg["principals"] = {"agent": ["echoer"]}
    cfg["limits"] = {
        "rate": [{"name": "tool_calls", "by": ["principal", "server", "tool"], "limit": LIMIT, "window_s": WINDOW_S}]
    }
    (bundle / "data.json").write_text(json.dumps(data))
    for test in bundle.rglob("*_test.rego"):
        test.unlink()  # their fixtures assume the default data.json
    return bundle


def _client(url: str, mode: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=httpx2.Timeout(60.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=60.0)  # type: ignore[arg-type]


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _echoes(log: Path) -> list[str]:
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e["arguments"]["text"] for e in entries if e.get("name") == "echo"]


def _unusable(state: Path) -> None:
    """The counter store made unusable: a directory where the state file was."""
    for leftover in state.parent.glob(state.name + "*"):
        leftover.unlink()
    state.mkdir()


def _rows(audit: Path) -> list[tuple[str, str | None, list[str]]]:
    db = sqlite3.connect(audit)
    try:
        rows = db.execute(
            "SELECT kind, decision, reasons FROM audit_events WHERE tool = 'echo' ORDER BY seq"
        ).fetchall()
    finally:
        db.close()
    return [(k, d, json.loads(r) if r else []) for k, d, r in rows]


async def _wait_for_echo(url: str) -> None:
    async with _client(url, "legacy") as c:
        with anyio.fail_after(60):
            while True:
                if "rec__echo" in {t.name for t in (await c.list_tools()).tools}:
                    return
                await anyio.sleep(0.05)


async def test_the_limit_holds_across_sessions_of_both_eras_and_fails_closed(tmp_path: Path) -> None:
    log = tmp_path / "rec.log"
    cfg = write_config(tmp_path, {"rec": recorder(log)}, bundle=_bundle(tmp_path))
    state = tmp_path / "mcp-guard-state.db"  # [audit] state_path, relative to the config file

    with http_guard(cfg, tmp_path / "guard.log") as url:
        await _wait_for_echo(url)  # listing does not count

        # 10 clients, each its own session: five 2025-11-25 sessions and five stateless 2026-07-28 clients
        # (every request of which is a new session). All connect first, then call at once.
        results: dict[int, types.CallToolResult] = {}
        go = anyio.Event()
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(_client(url, "legacy" if i % 2 else "2026-07-28")) for i in range(10)
            ]

            async def call(i: int, client: Client) -> None:
                await go.wait()
                results[i] = await client.call_tool("rec__echo", {"text": f"burst-{i}"})

            async with anyio.create_task_group() as tg:
                for i, client in enumerate(clients):
                    tg.start_soon(call, i, client)
                burst_started = time.monotonic()
                go.set()

        ok = [i for i, r in results.items() if not r.is_error]
        limited = [i for i, r in results.items() if r.is_error]
        assert len(ok) == LIMIT and len(limited) == 10 - LIMIT, {i: _text(r) for i, r in results.items()}
        assert sorted(_echoes(log)) == sorted(f"burst-{i}" for i in ok)  # the refused ones never reached it
        for i in limited:
            text = _text(results[i])
            assert text.startswith("Denied by mcp-guard: rate_limited; rate limit reached:"), text
            assert f"{KEY!r} allows {LIMIT} per {WINDOW_S} s" in text
            m = re.search(r"retry after (\d+) s \(retry_after_s=(\d+)\)", text)
            assert m and m.group(1) == m.group(2) and 1 <= int(m.group(1)) <= WINDOW_S, text
            assert "session" not in text  # says when to retry, never how to dodge
        meta = results[limited[0]].meta or {}
        assert meta["mcp-guard/decision"]["code"] == "rate_limited"

        # After the window, calls succeed again. Poll (denied polls are not counted), never a fixed sleep.
        async with _client(url, "2026-07-28") as client:
            with anyio.fail_after(WINDOW_S + 30):
                while True:
                    r = await client.call_tool("rec__echo", {"text": "after-window"})
                    if not r.is_error:
                        break
                    assert "rate_limited" in _text(r), _text(r)
                    await anyio.sleep(0.1)
            freed_after = time.monotonic() - burst_started
        assert freed_after >= WINDOW_S - 0.1  # no slot came back before the first counted call left the window

        # The counter store becomes unusable: calls are refused with a stated reason, nothing is forwarded.
        _unusable(state)
        async with _client(url, "legacy") as client:
            r = await client.call_tool("rec__echo", {"text": "store-down"})
        text = _text(r)
        assert r.is_error and text.startswith("Denied by mcp-guard: state_unavailable;"), text
        assert "unable to open database file" in text and str(tmp_path) not in text
        assert "store-down" not in _echoes(log)

    rows = _rows(tmp_path / "audit.db")
    decisions = [(d, reasons[0] if reasons else None) for kind, d, reasons in rows if kind == "call.decision"]
    assert decisions.count(("allow", "role 'echoer' allows rec__echo")) == LIMIT + 1
    assert decisions.count(("deny", "rate_limited")) >= 10 - LIMIT
    assert decisions[-1] == ("deny", "state_unavailable")  # recorded as every deny is
    with anyio.fail_after(60):
        verify = await anyio.run_process([*guard_argv(cfg)[:3], "audit", "verify", "--config", str(cfg)], check=False)
    assert verify.returncode == 0, verify.stdout.decode() + verify.stderr.decode()
