"""SIGKILL the proxy in the middle of a burst of calls: no event of any call whose answer reached the client
is lost, the chain still verifies, and a restarted proxy continues it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from e2e_support import API_KEY, POLL_S, REPO, _wait_for_url, guard_argv, recorder, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

H = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "Authorization": f"Bearer {API_KEY}",
}


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    err = log.open("w")
    return subprocess.Popen(
        guard_argv(cfg, "--transport", "http", "--port", "0"),
        stdout=subprocess.DEVNULL,
        stderr=err,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _answer(r: httpx2.Response) -> dict[str, Any] | None:
    for line in r.text.splitlines():
        if line.startswith("data:") and '"id"' in line:
            return dict(json.loads(line[5:]))
    return dict(r.json()) if r.headers.get("content-type", "").startswith("application/json") else None


async def _session(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    r = await http.post(
        url,
        headers=H,
        json={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "burst", "version": "0"},
            },
        },
    )
    h = {**H, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    await http.post(url, headers=h, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return h


def _verify(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_guard", "audit", "verify", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


async def test_sigkill_under_load_loses_no_answered_call(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"rec": recorder()})
    db = tmp_path / "audit.db"
    proc = _start(cfg, tmp_path / "guard1.log")
    answered: list[str] = []
    try:
        url = _wait_for_url(proc, tmp_path / "guard1.log")
        async with httpx2.AsyncClient(timeout=60, limits=httpx2.Limits(max_connections=100)) as http:
            sessions = [await _session(http, url) for _ in range(5)]
            killed = anyio.Event()

            async def call(n: int) -> None:
                text = f"burst-{n}"
                try:
                    r = await http.post(
                        url,
                        headers=sessions[n % 5],
                        json={
                            "jsonrpc": "2.0",
                            "id": n,
                            "method": "tools/call",
                            "params": {"name": "rec__echo", "arguments": {"text": text}},
                        },
                    )
                    ans = _answer(r)
                except (httpx2.HTTPError, ValueError):
                    return
                if ans and "result" in ans and ans["result"]["content"][0]["text"] == text and not killed.is_set():
                    answered.append(text)

            async def killer() -> None:
                with anyio.fail_after(60):
                    while len(answered) < 150:  # noqa: ASYNC110 - counting answers from other tasks
                        await anyio.sleep(POLL_S)
                proc.kill()  # SIGKILL: no flush, no clean shutdown
                killed.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(killer)
                for n in range(500):
                    tg.start_soon(call, n)
    finally:
        proc.kill()
        proc.wait()

    assert len(answered) >= 150
    v = _verify(db)
    assert v.returncode == 0, v.stdout + v.stderr
    conn = sqlite3.connect(db)
    decisions = {
        json.loads(a)["text"]: d
        for d, a in conn.execute(
            "SELECT decision_id, arguments FROM audit_events WHERE kind = 'call.decision' AND decision = 'allow'"
        )
    }
    results = {d for (d,) in conn.execute("SELECT decision_id FROM audit_events WHERE kind = 'call.result'")}
    conn.close()
    missing = [t for t in answered if t not in decisions or decisions[t] not in results]
    assert not missing, f"{len(missing)} answered calls lack their rows, e.g. {missing[:5]}"

    # A restarted proxy continues the same chain.
    proc = _start(cfg, tmp_path / "guard2.log")
    try:
        url = _wait_for_url(proc, tmp_path / "guard2.log")
        async with httpx2.AsyncClient(timeout=60) as http:
            h = await _session(http, url)
            r = await http.post(
                url,
                headers=h,
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": "rec__echo", "arguments": {"text": "after"}},
                },
            )
            assert (_answer(r) or {})["result"]["content"][0]["text"] == "after"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    v = _verify(db)
    assert v.returncode == 0, v.stdout + v.stderr
