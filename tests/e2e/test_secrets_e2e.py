"""A real connector that needs a token, through a real mcp-guard process: the call succeeds, and the token
appears in no result, error, listing, log line or audit file — in any encoding."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from e2e_support import REPO, guard_argv, write_config
from mcp.client.stdio import StdioServerParameters

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

sys.path.insert(0, str(REPO / "tests" / "secrets"))
from secret_checks import assert_no_secret  # noqa: E402

TOKEN = "tkt_e2e-Secret+Value/42=="


def _tickets(tmp: Path, **env: str) -> dict[str, object]:
    return {
        "command": "python",
        "args": ["-m", "connectors.tickets"],
        "cwd": str(REPO),
        "env": {"TICKETS_DB": str(tmp / "tickets.db"), "TICKETS_DEBUG_ECHO": "1", **env},
        "inject_env": {"TICKETS_TOKEN": "tickets_token"},
    }


async def test_token_never_reaches_the_agent_or_the_record(tmp_path: Path) -> None:
    extra = '\n[secrets.tickets_token]\nprovider = "env"\nname = "E2E_TICKETS_TOKEN"\n'
    cfg = write_config(
        tmp_path,
        {
            "tickets": _tickets(tmp_path),
            # Same connector, but its backend expects another token: every call fails, quoting ours.
            "badtickets": _tickets(
                tmp_path, TICKETS_EXPECTED_TOKEN="some-other-token-entirely", TICKETS_DB=str(tmp_path / "bad.db")
            ),
        },
        extra=extra,
        secrets_allowed=["tickets_token"],
    )
    stderr_log = tmp_path / "guard.stderr"
    argv = guard_argv(cfg)
    params = StdioServerParameters(
        command=argv[0],
        args=argv[1:],
        cwd=str(REPO),
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "E2E_TICKETS_TOKEN": TOKEN},
    )
    seen: list[str] = []
    with stderr_log.open("w") as errf:
        from mcp.client.session import ClientSession
        from mcp.client.stdio import stdio_client

        async with (
            stdio_client(params, errlog=errf) as (read, write),
            ClientSession(read, write, read_timeout_seconds=60) as client,
        ):
            await client.initialize()
            tools = await client.list_tools()
            seen.append(tools.model_dump_json())
            r = await client.call_tool("tickets__list_tickets", {"limit": 2})
            assert not r.is_error, r
            seen.append(r.model_dump_json())
            who = await client.call_tool("tickets__whoami", {})
            assert not who.is_error and "[REDACTED:tickets_token]" in who.model_dump_json()
            seen.append(who.model_dump_json())
            bad = await client.call_tool("badtickets__list_tickets", {})
            assert bad.is_error and "unauthorized" in bad.model_dump_json()
            seen.append(bad.model_dump_json())
            seen.append((await client.list_resources()).model_dump_json())
            seen.append((await client.list_prompts()).model_dump_json())
    for blob in seen:
        assert_no_secret(blob.encode(), TOKEN)
    _check_files(tmp_path, stderr_log)


def _check_files(tmp_path: Path, stderr_log: Path) -> None:
    """The proxy's own log and every audit file (database and WAL) are free of the token."""
    assert_no_secret(stderr_log.read_bytes(), TOKEN)
    audit_files = [f for f in tmp_path.iterdir() if f.name.startswith("audit.db")]
    assert audit_files
    for f in audit_files:
        assert_no_secret(f.read_bytes(), TOKEN)
