"""Two proxies on one SQLite audit file (two desktop clients launching the same stdio config): both write
one chain, no call is refused for the audit's sake, and every deny has its row."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest
from e2e_support import REPO, guard_argv, recorder, write_config
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CALLS = 60  # per proxy, in flight at once: enough to interleave the two writers' transactions
DENY_ADD = """package mcp_guard

import rego.v1

default decision := {"allow": true, "reasons": ["e2e: allowed"]}

decision := {"allow": false, "reasons": ["e2e: add is denied"]} if input.tool == "add"
"""


async def _burst(cfg: Path, who: str, errors: list[str]) -> tuple[int, int]:
    """CALLS concurrent calls through one proxy process: (allowed answers, denied answers)."""
    params = StdioServerParameters(
        command=sys.executable, args=guard_argv(cfg)[1:], cwd=str(REPO), env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    allowed = denied = 0

    async def one(i: int, session: ClientSession) -> None:
        nonlocal allowed, denied
        tool, args = ("rec__add", {"a": i, "b": 1}) if i % 3 == 0 else ("rec__echo", {"text": f"{who}-{i}"})
        r = await session.call_tool(tool, args)
        text = "".join(c.text for c in r.content if hasattr(c, "text"))
        if tool == "rec__add" and r.is_error and "e2e: add is denied" in text:
            denied += 1
        elif tool == "rec__echo" and not r.is_error:
            allowed += 1
        else:
            errors.append(f"{who} {tool}: {text}")

    with anyio.fail_after(120):
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            # the upstream may still be starting: poll its listing (under the fail_after above)
            while "rec__echo" not in {t.name for t in (await session.list_tools()).tools}:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            async with anyio.create_task_group() as tg:
                for i in range(CALLS):
                    tg.start_soon(one, i, session)
    return allowed, denied


async def test_two_proxies_share_one_audit_chain(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "deny_add.rego").write_text(DENY_ADD)
    cfg = write_config(tmp_path, {"rec": recorder()}, bundle=bundle)
    errors: list[str] = []
    results: dict[str, tuple[int, int]] = {}

    async def run(who: str) -> None:
        results[who] = await _burst(cfg, who, errors)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "one")
        tg.start_soon(run, "two")

    assert not errors, errors[:5]  # no call refused audit_unavailable, every deny answered as the policy's
    denies_answered = sum(d for _, d in results.values())
    assert denies_answered == 2 * len(range(0, CALLS, 3))

    with anyio.fail_after(60):
        verify = await anyio.run_process(
            [sys.executable, "-m", "mcp_guard", "audit", "verify", "--db", str(tmp_path / "audit.db")],
            check=False,
            cwd=REPO,
        )
    assert verify.returncode == 0, (verify.stdout + verify.stderr).decode()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        rows = db.execute("SELECT seq, kind, decision, tool, details FROM audit_events ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))  # one gap-free chain
    deny_rows = [r for r in rows if r[1] == "call.decision" and r[2] == "deny" and r[3] == "add"]
    assert len(deny_rows) == denies_answered  # never a deny without its row
    sessions = {json.loads(r[4] or "{}").get("transport") for r in rows if r[1] == "session.start"}
    assert sessions == {"stdio"} and sum(1 for r in rows if r[1] == "session.start") == 2
