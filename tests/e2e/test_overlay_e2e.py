"""Site data through a real proxy: the shipped bundle untouched, `[policy] data_overlay` granting a site role,
an overlay edit hot-reloaded, a misspelt key refused at reload (audited, naming file and key) with the last
good data kept — no restart."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from e2e_support import REPO, guard_argv, recorder, write_config
from mcp import Client
from mcp.client.stdio import StdioServerParameters

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

BUNDLE = REPO / "policies" / "rego"


def site(grants: list[str], **paths: object) -> str:
    config: dict[str, object] = {
        "principals": {"carol": ["rec-user"]},
        "roles": {"rec-user": {"grants": [{"server": "rec", "tools": grants}]}},
    }
    if paths:
        config["paths"] = paths
    return json.dumps({"mcp_guard_config": config})


def reload_failures(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT details FROM audit_events WHERE kind = 'policy.reload_failed'").fetchall()
    return [str(json.loads(r[0]).get("error")) for r in rows]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    """Poll an async predicate until it holds, under a deadline (hot reload looks once a second)."""
    with anyio.fail_after(within):
        while True:
            if await check():
                return
            await anyio.sleep(0.1)


async def test_overlay_grants_reloads_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    overlay = tmp_path / "site.json"
    overlay.write_text(site(["echo"]))
    cfg = write_config(tmp_path, {"rec": recorder()}, bundle=BUNDLE)
    cfg.write_text(cfg.read_text().replace("[policy]\n", '[policy]\ndata_overlay = ["site.json"]\n', 1))
    argv = guard_argv(cfg, "--principal", "carol")
    params = StdioServerParameters(
        command=argv[0],
        args=argv[1:],
        cwd=str(REPO),
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "PYTHONPATH": str(REPO / "src")},
    )
    async with Client(params, mode="legacy", read_timeout_seconds=60) as carol:
        assert not (await carol.call_tool("rec__echo", {"text": "hi"})).is_error
        assert (await carol.call_tool("rec__add", {"a": 1, "b": 2})).is_error

        overlay.write_text(site(["echo", "add"]))  # an overlay edit is a new revision, hot-reloaded

        async def add_allowed() -> bool:
            return not (await carol.call_tool("rec__add", {"a": 1, "b": 2})).is_error

        await eventually(add_allowed)

        overlay.write_text(site([], allowed_root={"rec": ["/x"]}))  # misspelt: refused, last good data kept

        async def refused() -> bool:
            return any("allowed_root" in e for e in reload_failures(tmp_path / "audit.db"))

        await eventually(refused)
        [error] = [e for e in reload_failures(tmp_path / "audit.db") if "allowed_root" in e]
        assert error.startswith(f"{overlay}: data.mcp_guard_config.paths.allowed_root: unknown key")
        assert await add_allowed()
