"""Helpers for tests/connectors: start a connector or fixture as a real subprocess and talk MCP to it.

(A uniquely named module rather than conftest.py so that `import` cannot pick up another conftest.)
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
READ_TIMEOUT_S = 20.0
POLL_S = 0.02  # interval of condition polls (always under a deadline)


def fixture_params(name: str, *args: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    """`python tests/fixtures/<name>.py args...`"""
    return StdioServerParameters(
        command=sys.executable, args=[str(FIXTURES / f"{name}.py"), *args], env=env or {}, cwd=str(REPO)
    )


def module_params(module: str, *args: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    """`python -m <module> args...` from the repo root."""
    return StdioServerParameters(command=sys.executable, args=["-m", module, *args], env=env or {}, cwd=str(REPO))


@asynccontextmanager
async def connect(params: StdioServerParameters, **session_kwargs: Any) -> AsyncIterator[ClientSession]:
    """Spawn the server, run the MCP handshake, and yield the session (read timeout always set)."""
    session_kwargs.setdefault("read_timeout_seconds", READ_TIMEOUT_S)
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, **session_kwargs) as session,
    ):
        await session.initialize()
        yield session


async def wait_until(predicate: Callable[[], bool], *, within: float = 10.0) -> None:
    """Poll a condition another process makes true (e.g. a line in its log file), with a deadline."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 -- the state lives in another process; no event to await
            await anyio.sleep(POLL_S)
